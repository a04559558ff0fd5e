"""One behaviour contract for every ObjectStore: the local filesystem and S3 (real SeaweedFS).

Each test runs against both backends; where a backend legitimately differs (presigned URLs,
SeaweedFS's listing order, the local store's key/prefix limitation) the test says so.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylon_services.common.errors import FailedPrecondition, InvalidArgument
from pylon_services.storage.base import (
    CompletedPart,
    EtagMismatch,
    ObjectExists,
    ObjectNotFound,
    ObjectStore,
)
from pylon_services.storage.factory import open_store
from pylon_services.storage.local import LocalObjectStore
from pylon_services.storage.s3 import S3ObjectStore

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
PROCESSES = 8


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    s3_store: S3ObjectStore = request.getfixturevalue("s3_store")
    return s3_store


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating bytes (so ranges and part boundaries are checked for real)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# -- basic reads and writes -------------------------------------------------------------------


def test_put_get_roundtrip(store: ObjectStore) -> None:
    data = payload(10_000)
    info = store.put("datasets/a/v1/data.bin", data)
    assert (info.key, info.size, info.etag) == ("datasets/a/v1/data.bin", len(data), md5(data))
    assert store.get("datasets/a/v1/data.bin") == data
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.head("empty").size == 0


def test_ranged_get(store: ObjectStore) -> None:
    data = payload(1000)
    store.put("r", data)
    assert store.get("r", start=10, end=20) == data[10:20]
    assert store.get("r", start=990) == data[990:]
    assert store.get("r", end=5) == data[:5]
    assert store.get("r", start=900, end=5000) == data[900:]
    assert store.get("r", start=1000) == b""
    assert store.get("r", start=5, end=5) == b""


def test_iter_chunks_streams_from_offset(store: ObjectStore) -> None:
    data = payload(3 * MIB + 123)
    store.put("big", data)
    chunks = list(store.iter_chunks("big", chunk_size=256 * 1024, offset=1000))
    assert b"".join(chunks) == data[1000:]
    assert max(len(c) for c in chunks) <= 256 * 1024
    assert len(chunks) > 1
    assert list(store.iter_chunks("big", offset=len(data))) == []


def test_head_exists_and_metadata(store: ObjectStore) -> None:
    data = b"hello"
    meta = {"content-sha256": hashlib.sha256(data).hexdigest(), "source": "unit test", "a_b.c": "1"}
    store.put("m/obj", data, metadata=meta)
    info = store.head("m/obj")
    assert (info.size, info.etag, info.metadata) == (5, md5(data), meta)
    assert store.exists("m/obj")
    assert not store.exists("m/other")
    assert not store.exists("m")  # a prefix is not an object
    store.put("m/obj", b"replaced")
    assert store.head("m/obj").metadata == {}  # a new put replaces metadata, as on S3


def test_invalid_metadata_rejected(store: ObjectStore) -> None:
    for bad in ({"Upper": "x"}, {"k": "caf\u00e9"}, {"k": "x" * 3000}, {"": "x"}):
        with pytest.raises(InvalidArgument):
            store.put("m/bad", b"x", metadata=bad)
    assert not store.exists("m/bad")


def test_missing_key_raises_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("no/such/key")
    with pytest.raises(ObjectNotFound):
        store.get("no/such/key", start=1, end=2)
    with pytest.raises(ObjectNotFound):
        store.head("no/such/key")
    with pytest.raises(ObjectNotFound):
        store.iter_chunks("no/such/key")  # raised on the call, before iterating
    with pytest.raises(ObjectNotFound):
        store.get_file("no/such/key", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ObjectNotFound):
        store.copy("no/such/key", "dst")


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".", "a\x00b", "x" * 1025]
)
def test_invalid_keys_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidArgument):
        store.put(key, b"x")
    with pytest.raises(InvalidArgument):
        store.get(key)
    with pytest.raises(InvalidArgument):
        store.head(key)
    with pytest.raises(InvalidArgument):
        store.delete(key)


# -- create-only and compare-and-swap -------------------------------------------------------


def test_create_only_on_existing_key(store: ObjectStore) -> None:
    first = store.put("c/k", b"original", if_none_match=True)
    with pytest.raises(ObjectExists):
        store.put("c/k", b"intruder", if_none_match=True)
    assert store.get("c/k") == b"original"
    assert store.head("c/k").etag == first.etag


def test_cas_with_current_etag(store: ObjectStore) -> None:
    first = store.put("cas/k", b"v1")
    second = store.put("cas/k", b"v2", if_match=first.etag, metadata={"gen": "2"})
    assert second.etag == md5(b"v2") != first.etag
    assert store.get("cas/k") == b"v2"
    assert store.head("cas/k").metadata == {"gen": "2"}
    assert store.put("cas/k", b"v3", if_match=f'"{second.etag}"').etag == md5(b"v3")  # quotes ok


def test_cas_with_stale_etag(store: ObjectStore) -> None:
    stale = store.put("cas/k", b"v1")
    store.put("cas/k", b"v2")
    with pytest.raises(EtagMismatch):
        store.put("cas/k", b"lost update", if_match=stale.etag)
    assert store.get("cas/k") == b"v2"


def test_cas_on_missing_key(store: ObjectStore) -> None:
    with pytest.raises(EtagMismatch):
        store.put("cas/none", b"x", if_match=md5(b"x"))
    assert not store.exists("cas/none")


def _conditional_writer(store: ObjectStore, key: str, index: int, if_match: str | None,
                        barrier: Any, results: Any) -> None:
    """Child process: wait for all siblings, then try one conditional put; report the outcome."""
    data = f"writer-{index}".encode()
    barrier.wait(timeout=120)
    try:
        if if_match is None:
            store.put(key, data, if_none_match=True)
        else:
            store.put(key, data, if_match=if_match)
        results.put((index, "won"))
    except (ObjectExists, EtagMismatch) as err:
        results.put((index, type(err).__name__))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((index, f"error: {err!r}"))


def _race(store: ObjectStore, key: str, if_match: str | None) -> dict[int, str]:
    """PROCESSES spawned processes do the same conditional put at once; returns their outcomes."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_conditional_writer, args=(store, key, i, if_match, barrier, results))
             for i in range(PROCESSES)]  # fmt: skip
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=180) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return outcomes


def test_concurrent_create_only_from_processes_one_wins(store: ObjectStore) -> None:
    outcomes = _race(store, "race/create", if_match=None)
    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    assert sorted(outcomes.values()).count("ObjectExists") == PROCESSES - 1, outcomes
    assert store.get("race/create") == f"writer-{winners[0]}".encode()


def test_concurrent_cas_from_processes_one_wins(store: ObjectStore) -> None:
    base = store.put("race/cas", b"base")
    outcomes = _race(store, "race/cas", if_match=base.etag)
    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    assert sorted(outcomes.values()).count("EtagMismatch") == PROCESSES - 1, outcomes
    assert store.get("race/cas") == f"writer-{winners[0]}".encode()


# -- listing ----------------------------------------------------------------------------------


def test_list_pages_in_key_order_with_prefix_isolation(store: ObjectStore) -> None:
    keys = [f"data/k{i:02d}" for i in range(25)]
    for key in reversed(keys):
        store.put(key, key.encode())
    for other in ("data2/x", "dat", "other/data/k00"):
        store.put(other, b"x")
    pages, token = [], None
    while True:
        page = store.list("data/", page_size=10, page_token=token)
        pages.append([o.key for o in page.objects])
        token = page.next_page_token
        if token is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [k for p in pages for k in p] == keys
    listed = store.list("data/k0", page_size=100).objects
    assert [o.key for o in listed] == keys[:10]
    assert (listed[3].size, listed[3].etag) == (len(keys[3]), md5(keys[3].encode()))
    assert store.list("nothing/").objects == [] and store.list("nothing/").next_page_token is None
    assert [o.key for o in store.list("dat").objects] == ["dat", *keys, "data2/x"]


def test_list_order_around_separator(store: ObjectStore) -> None:
    """'.' and '-' sort before '/': S3 (AWS, MinIO) and the local store list 'p/a-1', 'p/a.c'
    before 'p/a/b'. SeaweedFS walks its directory tree instead ('p/a/b' right after 'p/a'), so
    there only completeness is checked; its pages stay consistent because it interprets the
    page token the same way."""
    keys = ["p/a/b", "p/a.c", "p/a-1", "p/a0", "p/a/c/d"]
    for key in keys:
        store.put(key, b"1")
    seen, token = [], None
    while True:
        page = store.list("p/", page_size=2, page_token=token)
        seen += [o.key for o in page.objects]
        if (token := page.next_page_token) is None:
            break
    if isinstance(store, LocalObjectStore):
        assert seen == sorted(keys)
    else:
        assert sorted(seen) == sorted(keys) and len(seen) == len(keys)


def test_iter_all_follows_pages(store: ObjectStore) -> None:
    keys = [f"all/{i:04d}" for i in range(1005)]  # > one 1000-key page
    if isinstance(store, S3ObjectStore):
        keys = keys[:30]  # S3 pages are server-side; keep the test quick
    for key in keys:
        store.put(key, b"")
    assert [o.key for o in store.iter_all("all/")] == keys


def test_local_key_cannot_also_be_a_prefix(tmp_path: Path) -> None:
    """Documented limitation of the filesystem store (S3 allows both 'a' and 'a/b')."""
    store = LocalObjectStore(tmp_path)
    store.put("a", b"file")
    with pytest.raises(FailedPrecondition):
        store.put("a/b", b"below a file")
    store.put("x/y", b"1")
    with pytest.raises(FailedPrecondition):
        store.put("x", b"over a folder")
    store.delete("x/y")
    store.put("x", b"fine once x/ is empty")  # empty folders are pruned on delete
    assert store.get("x") == b"fine once x/ is empty"


# -- delete and copy ------------------------------------------------------------------------


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/k", b"x")
    store.delete("d/k")
    assert not store.exists("d/k")
    with pytest.raises(ObjectNotFound):
        store.get("d/k")
    store.delete("d/k")
    store.delete("d/never")
    assert store.list("d/").objects == []


def test_copy(store: ObjectStore) -> None:
    src = store.put("cp/src", b"payload", metadata={"kind": "model"})
    dst = store.copy("cp/src", "cp/dst")
    assert (dst.key, dst.size, dst.etag, dst.metadata) == ("cp/dst", 7, src.etag, {"kind": "model"})
    assert store.get("cp/dst") == b"payload"
    assert store.head("cp/dst").metadata == {"kind": "model"}
    store.put("cp/src", b"changed")  # the copy is independent of its source
    assert store.get("cp/dst") == b"payload"
    with pytest.raises(ObjectExists):
        store.copy("cp/src", "cp/dst", if_none_match=True)
    assert store.get("cp/dst") == b"payload"
    assert store.copy("cp/src", "cp/new", if_none_match=True).etag == md5(b"changed")


# -- multipart ------------------------------------------------------------------------------


def test_multipart_upload_resume_and_complete(store: ObjectStore) -> None:
    parts_data = [payload(5 * MIB, 1), payload(5 * MIB, 2), payload(12345, 3)]
    upload_id = store.create_multipart("mp/obj")
    first = store.upload_part("mp/obj", upload_id, 1, parts_data[0])
    assert first == CompletedPart(1, md5(parts_data[0]))
    store.upload_part("mp/obj", upload_id, 2, parts_data[1])
    # An interrupted client resumes from list_parts: it knows parts 1-2, uploads part 3.
    resumed = store.list_parts("mp/obj", upload_id)
    assert resumed == [CompletedPart(1, md5(parts_data[0])), CompletedPart(2, md5(parts_data[1]))]
    resumed.append(store.upload_part("mp/obj", upload_id, 3, parts_data[2]))
    assert not store.exists("mp/obj")
    info = store.complete_multipart("mp/obj", upload_id, resumed)
    whole = b"".join(parts_data)
    assert (info.key, info.size) == ("mp/obj", len(whole))
    assert info.etag.endswith("-3")  # S3's multipart etag form, on both backends
    assert store.head("mp/obj").etag == info.etag
    assert store.get("mp/obj") == whole
    with pytest.raises(ObjectNotFound):
        store.list_parts("mp/obj", upload_id)
    assert store.put("mp/obj", b"swapped", if_match=info.etag).etag == md5(b"swapped")


def test_multipart_reuploaded_part_replaces_the_old_one(store: ObjectStore) -> None:
    first, old, new = payload(5 * MIB, 4), b"old part", b"new part"
    upload_id = store.create_multipart("mp/re")
    part1 = store.upload_part("mp/re", upload_id, 1, first)
    store.upload_part("mp/re", upload_id, 2, old)
    part2 = store.upload_part("mp/re", upload_id, 2, new)
    listed = store.list_parts("mp/re", upload_id)
    # Never the superseded part; SeaweedFS may leave a part out when it cannot tell which
    # upload is newer (the resuming client then sends it again).
    assert listed in ([part1, part2], [part1])
    store.complete_multipart("mp/re", upload_id, [part1, part2])
    assert store.get("mp/re") == first + new


def test_multipart_rejects_bad_part_lists(store: ObjectStore) -> None:
    upload_id = store.create_multipart("mp/bad")
    small = store.upload_part("mp/bad", upload_id, 1, b"tiny")
    last = store.upload_part("mp/bad", upload_id, 2, b"end")
    with pytest.raises(InvalidArgument):  # non-last parts must be >= 5 MiB
        store.complete_multipart("mp/bad", upload_id, [small, last])
    with pytest.raises(InvalidArgument):  # wrong etag
        store.complete_multipart("mp/bad", upload_id, [CompletedPart(1, md5(b"other"))])
    assert store.list_parts("mp/bad", upload_id) == [small, last]  # still resumable
    store.abort_multipart("mp/bad", upload_id)


def test_multipart_abort(store: ObjectStore) -> None:
    upload_id = store.create_multipart("mp/aborted")
    store.upload_part("mp/aborted", upload_id, 1, b"x" * 100)
    store.abort_multipart("mp/aborted", upload_id)
    with pytest.raises(ObjectNotFound):
        store.list_parts("mp/aborted", upload_id)
    with pytest.raises(ObjectNotFound):
        store.upload_part("mp/aborted", upload_id, 2, b"late")
    store.abort_multipart("mp/aborted", upload_id)  # idempotent
    assert not store.exists("mp/aborted")


# -- presigned URLs and files ---------------------------------------------------------------


def _http(url: str, method: str = "GET", data: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    assert url.startswith("http://127.0.0.1:")  # never leave this machine
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read(), dict(response.headers)


def test_presigned_urls(store: ObjectStore) -> None:
    if isinstance(store, LocalObjectStore):
        assert store.presign("GET", "k") is None
        assert store.presign("PUT", "k") is None
        return
    store.put("ps/get", b"downloaded without credentials")
    url = store.presign("GET", "ps/get", expires_s=60)
    assert url is not None
    assert _http(url)[0] == b"downloaded without credentials"
    put_url = store.presign("PUT", "ps/put", expires_s=60)
    assert put_url is not None
    _http(put_url, "PUT", b"uploaded without credentials")
    assert store.get("ps/put") == b"uploaded without credentials"
    upload_id = store.create_multipart("ps/mp")
    parts = []
    for number, data in ((1, payload(5 * MIB, 7)), (2, b"tail")):
        part_url = store.presign("PUT", "ps/mp", upload_id=upload_id, part_number=number)
        assert part_url is not None
        _body, headers = _http(part_url, "PUT", data)
        parts.append(CompletedPart(number, headers["ETag"].strip('"')))
    store.complete_multipart("ps/mp", upload_id, parts)
    assert store.get("ps/mp") == payload(5 * MIB, 7) + b"tail"


def test_presigned_put_is_create_only_and_checked_against_its_sha256(store: ObjectStore) -> None:
    """``presign_put``: the signed headers make the URL create-only and, with a sha256, make the
    store refuse any other bytes; ``stored_sha256`` reports the digest the store verified."""
    import urllib.error

    data = b"verified by the store"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if isinstance(store, LocalObjectStore):
        assert store.presign_put("k", sha256=digest) is None
        store.put("k", data)
        assert store.stored_sha256("k") is None
        return

    def put(url: str, body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(url, data=body, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(req) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    signed = store.presign_put("pp/checked", expires_s=60, sha256=digest)
    assert signed is not None
    url, headers = signed
    assert put(url, b"other bytes", headers) == 400  # not the signed digest: refused by the store
    assert put(url, data, {"If-None-Match": "*"}) == 403  # the checksum header is signed
    assert not store.exists("pp/checked")
    assert put(url, data, headers) == 200
    assert store.stored_sha256("pp/checked") == digest and store.get("pp/checked") == data
    assert put(url, data, headers) == 412  # create-only
    plain = store.presign_put("pp/plain", expires_s=60)
    assert plain is not None and set(plain[1]) == {"If-None-Match"}
    assert put(plain[0], data, plain[1]) == 200 and put(plain[0], b"again", plain[1]) == 412
    assert store.stored_sha256("pp/plain") is None  # no checksum was asked for: none is claimed
    store.put("pp/direct", data)
    assert store.stored_sha256("pp/direct") is None


def test_put_file_and_get_file(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    data = payload(12 * MIB + 17, 9)
    source.write_bytes(data)
    info = store.put_file("files/ckpt.bin", str(source), metadata={"step": "100"})
    assert info.size == len(data)
    assert store.head("files/ckpt.bin").metadata == {"step": "100"}
    target = tmp_path / "out" / "ckpt.bin"
    got = store.get_file("files/ckpt.bin", str(target))
    assert target.read_bytes() == data
    assert (got.size, got.etag) == (len(data), info.etag)
    assert [p.name for p in target.parent.iterdir()] == ["ckpt.bin"]  # no temp files left


# -- factory ----------------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path) -> None:
    by_url = open_store(f"file://{tmp_path}/a")
    assert isinstance(by_url, LocalObjectStore) and by_url.root == tmp_path / "a"
    by_path = open_store(str(tmp_path / "b"))
    assert isinstance(by_path, LocalObjectStore) and by_path.root == tmp_path / "b"
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3ObjectStore) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    for bad in ("gs://bucket", "file://host/x", "s3://", "file://relative"):
        with pytest.raises(InvalidArgument):
            open_store(bad)


def test_open_store_reaches_seaweed(seaweed: Any) -> None:
    store = open_store("s3://pylon-test/factory", endpoint_url=seaweed.endpoint_url,
                       access_key=seaweed.access_key, secret_key=seaweed.secret_key)  # fmt: skip
    store.put("k", b"v")
    assert store.get("k") == b"v"


def _all_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file())


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("k", b"v")
    with pytest.raises(ObjectExists):
        store.put("k", b"w", if_none_match=True)
    with pytest.raises(EtagMismatch):
        store.put("k", b"w", if_match="0" * 32)
    store.put("k", b"v2")
    assert list(_all_files(tmp_path / ".tmp")) == []
    assert len(list(_all_files(tmp_path / ".meta"))) == 1  # only the live object's record
