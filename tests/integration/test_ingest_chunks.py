"""Chunk-level parallelism through a real ingest on SeaweedFS + Redis + Ray: the same data sent to
an ingest that splits files into 32 KiB chunks and to one that processes each file whole (its
Ray cluster is below its CPU minimum for chunking) gives versions with the same counts, rejects
(same line numbers), cleaned bytes, schema and profile."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

import pylon
from tests.conftest import TEST_BUCKET
from tests.support.ingest_server import ingest_settings, start_in_process, stop_in_process

pytestmark = pytest.mark.integration
CHUNK = 32 << 10


@pytest.fixture(scope="module")
def servers(redis_server, ray_cluster, seaweed):
    os.environ["PYLON_INGEST_CHUNK_BYTES"] = str(CHUNK)  # read once, when a server is built
    try:
        # "whole": a Ray cluster this small (any) is below its CPU minimum, so it never splits
        os.environ["PYLON_INGEST_CHUNK_MIN_CPUS"] = "100000"
        whole = start_in_process(ingest_settings(redis_server.url, seaweed, ray_cluster.address, TEST_BUCKET, db=10))
        os.environ["PYLON_INGEST_CHUNK_MIN_CPUS"] = "1"
        split = start_in_process(ingest_settings(redis_server.url, seaweed, ray_cluster.address, TEST_BUCKET, db=14))
    finally:
        del os.environ["PYLON_INGEST_CHUNK_BYTES"], os.environ["PYLON_INGEST_CHUNK_MIN_CPUS"]
    yield whole, split
    stop_in_process(split)
    stop_in_process(whole)


@pytest.fixture
def clients(servers, tmp_path, monkeypatch):
    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    whole, split = servers
    with whole.client("acme") as a, split.client("acme") as b:
        yield a, b


def _records(n: int) -> bytes:
    out = []
    for i in range(n):
        if i % 97 == 13:
            out.append(b"{oops")
        elif i % 211 == 50:
            out.append(b"")
        elif i % 53 == 7:
            out.append(json.dumps({"text": f"repeated text {i % 3}", "id": i}).encode())
        else:
            out.append(json.dumps({"text": f"record {i} " + "word " * (i % 40), "id": i}).encode())
    return b"\n".join(out) + b"\n"


def _compare(store_a, store_b, va, vb) -> None:
    assert (vb.record_count, vb.reject_count, vb.dropped) == (va.record_count, va.reject_count, va.dropped)
    assert vb.schema == va.schema and vb.profile == va.profile
    assert [f["digest"] for f in vb.files] == [f["digest"] for f in va.files]
    assert [f["digest"] for f in vb.processed_files] == [f["digest"] for f in va.processed_files]
    assert [f["record_count"] for f in vb.processed_files] == [f["record_count"] for f in va.processed_files]
    for fa, fb in zip(va.processed_files, vb.processed_files, strict=True):
        assert store_b.get(fb["object_key"]) == store_a.get(fa["object_key"])


def test_a_file_split_into_chunks_gives_the_same_version_as_one_pass(servers, clients, tmp_path):
    (whole, split), (a, b) = servers, clients
    path = tmp_path / "big.jsonl"
    path.write_bytes(_records(6000))  # ~ 400 KB: a dozen chunks
    assert path.stat().st_size > 10 * CHUNK
    op_a = a.datasets.upload(str(path), "chunky", max_reject_rate=0.5, wait=False)
    assert "chunks" not in a.datasets.wait(op_a.name, timeout=300).metadata  # below its CPU minimum
    va = a.datasets.get("chunky", "latest")
    op = b.datasets.upload(str(path), "chunky", max_reject_rate=0.5, wait=False)
    done = b.datasets.wait(op.name, timeout=300)
    assert not done.failed, done.error_message
    assert int(done.metadata["chunks"]) >= 10
    vb = b.datasets.get("chunky", "latest")
    assert va.reject_count == 62 and va.dropped["duplicate"] > 50
    _compare(whole.store(), split.store(), va, vb)
    rejects_a, rejects_b = list(a.datasets.rejects("chunky")), list(b.datasets.rejects("chunky"))
    assert rejects_b == rejects_a
    assert [r.line for r in rejects_b] == [i + 1 for i in range(6000) if i % 97 == 13]
    assert b.datasets.preview("chunky", limit=50) == a.datasets.preview("chunky", limit=50)
    leftovers = [o.key for o in split.store().iter_all("tenants/acme/datasets/chunky/processed/")
                 if o.key.count(".") > 2 or o.key.endswith(".dedupe")]
    assert not leftovers  # per-chunk objects are gone once merged


def _csv(rows: int, quoted_newline_at: int = -1) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "text", "score"])
    for i in range(rows):
        text = "a cell\nover two lines" if i == quoted_newline_at else f"row {i}, " + "text " * (i % 30)
        if i % 101 == 9:
            buf.write(f"{i},wrong,column,count\n")
        else:
            w.writerow([i, text if i % 61 != 3 else "shared between files", f"{i / 7:.3f}"])
    return buf.getvalue().encode()


def test_csv_with_header_and_dedupe_across_chunks_and_files(servers, clients):
    (whole, split), (a, b) = servers, clients
    versions = []
    for it, client in ((whole, a), (split, b)):
        store = it.store()
        store.put("tenants/acme/in/rows.csv", _csv(4000))
        store.put("tenants/acme/in/more.csv", b"id,text,score\n" + b"".join(
            f"x,{t},1\n".encode() for t in ["shared between files", "only here"] * 3000))
        versions.append(client.datasets.import_objects(["tenants/acme/in/rows.csv", "tenants/acme/in/more.csv"],
                                                       "mixed", max_reject_rate=0.5))
    va, vb = versions
    assert va.reject_count == 40 and va.dropped["duplicate"] == 64 + 5999
    _compare(whole.store(), split.store(), va, vb)
    assert list(b.datasets.rejects("mixed")) == list(a.datasets.rejects("mixed"))


def test_csv_with_a_quoted_newline_is_processed_again_as_one_chunk(servers, clients):
    (whole, split), (a, b) = servers, clients
    versions = []
    for it, client in ((whole, a), (split, b)):
        it.store().put("tenants/acme/in/quoted.csv", _csv(3000, quoted_newline_at=1500))
        versions.append(client.datasets.import_objects(["tenants/acme/in/quoted.csv"], "quoted", max_reject_rate=0.5,
                                                       wait=False))
    done = [c.datasets.wait(op.name, timeout=300) for c, op in zip((a, b), versions, strict=True)]
    assert done[1].metadata["files_unsplit"] == 1 and "files_unsplit" not in done[0].metadata
    va, vb = (c.datasets.get("quoted", "latest") for c in (a, b))
    _compare(whole.store(), split.store(), va, vb)
    assert list(b.datasets.rejects("quoted")) == list(a.datasets.rejects("quoted"))


def test_a_chunked_upload_with_a_lying_digest_fails_and_leaves_nothing(servers, clients):
    from tests.integration.test_ingest_uploads import _commit, _session, put

    (_, split), (_, b) = servers, clients
    data = _records(3000)
    s = _session(b, "lying-chunks", data, digest="sha256:" + "cd" * 32)
    for p in s.parts:
        start = (p.part_number - 1) * 5 * 2**20
        put(p.url, data[start:start + 5 * 2**20])
    op = b.datasets.wait(_commit(b, s).name, timeout=300)
    assert op.failed and "hash to sha256:" in op.error_message
    assert int(op.metadata["chunks"]) > 3
    with pytest.raises(pylon.NotFoundError):
        b.datasets.get("lying-chunks", 1)
    store = split.store()
    assert not list(store.iter_all("tenants/acme/uploads/" + s.name.rsplit("/", 1)[1]))
    assert not list(store.iter_all("tenants/acme/datasets/lying-chunks/"))
