"""Direct uploads (presigned multipart) through a real ingest on SeaweedFS + Redis + Ray:
resume, dedupe, commit-time verification, racing commits, another tenant's data."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request

import pytest

import pylon
from pylon.ingest.v1 import ingest_pb2
from pylon.resources.datasets import part_hashes
from tests.support.ingest_server import ingest_fixtures

pytestmark = pytest.mark.integration
MiB = 1 << 20


ingest, acme = ingest_fixtures(db=7)


def jsonl(path, n, bad_every=0, width=40):
    with open(path, "w") as f:
        for i in range(n):
            if bad_every and i % bad_every == bad_every - 1:
                f.write("{not json\n")
            else:
                f.write(json.dumps({"text": f"record {i} " + "x" * (i % width), "id": i}) + "\n")
    return str(path)


def test_direct_upload_processes_on_ray_and_reupload_sends_nothing(acme, tmp_path):
    path = jsonl(tmp_path / "train.jsonl", 2000, bad_every=100)
    sent = []
    v1 = acme.datasets.upload(path, "direct", max_reject_rate=0.05, progress=lambda d, t: sent.append(d))
    assert v1.version == 1 and v1.source == "upload:presigned"
    assert (v1.record_count, v1.reject_count) == (1980, 20)
    assert v1.files[0]["digest"] == "sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert v1.files[0]["object_key"].startswith("tenants/acme/blobs/sha256/")
    rejects = list(acme.datasets.rejects("direct", 1))
    assert [r.line for r in rejects] == list(range(100, 2001, 100))
    assert all(r.reason.startswith("malformed_json") and r.raw == "{not json" for r in rejects)
    preview = acme.datasets.preview("direct", 1, limit=3)
    assert preview[0]["text"] == "record 0" and len(preview) == 3
    # The same bytes again: the session says they are held, no part is sent, same content digest.
    v2 = acme.datasets.upload(path, "direct", max_reject_rate=0.05)
    assert (v2.version, v2.digest, v2.files[0]["object_key"]) == (2, v1.digest, v1.files[0]["object_key"])
    # Verified bytes processed the same way before: the cleaned outputs are reused, not recomputed.
    ops = [acme.datasets.operation(f"tenants/acme/operations/{v.operation}") for v in (v1, v2)]
    assert [o.metadata["files_reused"] for o in ops] == [0, 1]
    assert v2.processed_files == v1.processed_files and v2.reject_count == 20
    # A different recipe on the same bytes is processed afresh.
    v3 = acme.datasets.upload(path, "direct", max_reject_rate=0.05, recipe={"scrub_email": True})
    assert acme.datasets.operation(f"tenants/acme/operations/{v3.operation}").metadata["files_reused"] == 0
    assert v3.digest != v1.digest


def test_interrupted_upload_resumes_sending_only_missing_parts(acme, ingest, tmp_path, monkeypatch):
    import pylon.resources.datasets as ds

    path = jsonl(tmp_path / "big.jsonl", 60_000, width=300)  # ~ 12 MiB -> 3 parts of 5 MiB
    digest, md5s = part_hashes(path, 5 * MiB)
    real, sent_parts = ds._send_parts, []

    def dies_after_part_1(p, ps, urls, c, prog):
        real(p, ps, {1: urls[1]}, c, prog)
        raise ConnectionError("network gone")

    monkeypatch.setattr(ds, "_send_parts", dies_after_part_1)
    with pytest.raises(ConnectionError):
        acme.datasets.upload(path, "resumed", part_size=5 * MiB)
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("resumed")
    # The store holds part 1 (GetUploadSession says so, with its MD5 as ETag) ...
    sessions = list((tmp_path / "cache" / "uploads").iterdir())
    name = sessions[0].read_text()
    got = acme.call(acme.ingest.GetUploadSession, ingest_pb2.GetUploadSessionRequest(name=name)).session
    assert [p.uploaded for p in got.parts] == [True, False, False] and got.parts[0].etag == md5s[0]

    def spy(p, ps, urls, c, prog):
        sent_parts.append(sorted(urls))
        return real(p, ps, urls, c, prog)

    # ... and the next upload of the same file resumes that session, sending parts 2 and 3 only.
    monkeypatch.setattr(ds, "_send_parts", spy)
    v = acme.datasets.upload(path, "resumed", part_size=5 * MiB)
    assert sent_parts == [[2, 3]]
    assert v.files[0]["digest"] == digest and v.record_count == 60_000
    # --no-resume starts afresh (the bytes are held now, so nothing is sent at all).
    sent_parts.clear()
    assert acme.datasets.upload(path, "resumed", part_size=5 * MiB, resume=False).deduplicated
    assert sent_parts == []


def put(url, body):
    req = urllib.request.Request(url, data=body, method="PUT")
    with urllib.request.urlopen(req) as resp:
        return resp.headers["ETag"].strip('"')


def _session(acme, name, data, part_size=5 * MiB, md5s=None, digest=None):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(data)
        f.flush()
        d, m = part_hashes(f.name, part_size)
    header = ingest_pb2.UploadHeader(dataset=f"tenants/-/datasets/{name}", path="d.jsonl", digest=digest or d,
                                     size_bytes=len(data))
    return acme.call(acme.ingest.CreateUploadSession, ingest_pb2.CreateUploadSessionRequest(
        header=header, part_size_bytes=part_size, part_md5s=m if md5s is None else md5s)).session


def _commit(acme, s, request_id="", version=0):
    req = ingest_pb2.CommitUploadSessionRequest(name=s.name, request_id=request_id, version=version)
    return acme.call(acme.ingest.CommitUploadSession, req).operation


def test_corrupted_or_truncated_parts_are_rejected_at_commit(acme):
    data = b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(400_000))
    s = _session(acme, "corrupt", data)
    put(s.parts[0].url, data[:5 * MiB])
    put(s.parts[1].url, b"X" + data[5 * MiB + 1:10 * MiB])  # one flipped byte in transit
    for p in s.parts[2:]:
        start = (p.part_number - 1) * 5 * MiB
        put(p.url, data[start:start + 5 * MiB])
    with pytest.raises(pylon.InvalidArgumentError, match=r"parts\[2\].*corrupted or truncated"):
        _commit(acme, s)
    # A truncated re-send of the (last) part is caught the same way. (SeaweedFS lists every
    # upload of a part number; the store keeps the newest, which needs distinct seconds.)
    time.sleep(1.1)
    last = s.parts[-1]
    put(last.url, data[(last.part_number - 1) * 5 * MiB:-10])
    with pytest.raises(pylon.InvalidArgumentError, match=rf"parts\[{last.part_number}\]"):
        _commit(acme, s)
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("corrupt")
    # Re-sending it intact fixes the session: the commit goes through.
    time.sleep(1.1)
    put(last.url, data[(last.part_number - 1) * 5 * MiB:])
    assert not acme.datasets.wait(_commit(acme, s).name).failed
    assert acme.datasets.get("corrupt", 1).record_count == 400_000


def test_part_md5s_sent_with_the_commit_are_checked_like_declared_ones(acme):
    """What the SDK does: no MD5s at CreateUploadSession, each part hashed while sent, the MD5s
    sent with the commit. A part corrupted in transit is caught at commit all the same."""
    data = b"".join(json.dumps({"text": f"entry {i}"}).encode() + b"\n" for i in range(250_000))
    _, md5s = part_hashes_of(data, 5 * MiB)
    s = _session(acme, "md5-at-commit", data, md5s=[])
    for p in s.parts:
        start = (p.part_number - 1) * 5 * MiB
        chunk = data[start:start + 5 * MiB]
        put(p.url, chunk if p.part_number != 2 else chunk[:-1] + b"?")  # one byte changed in transit
    req = ingest_pb2.CommitUploadSessionRequest
    with pytest.raises(pylon.InvalidArgumentError, match=r"parts\[2\].*corrupted or truncated"):
        acme.call(acme.ingest.CommitUploadSession, req(name=s.name, part_md5s=md5s))
    with pytest.raises(pylon.InvalidArgumentError, match=f"1 given, the file has {len(md5s)} parts"):
        acme.call(acme.ingest.CommitUploadSession, req(name=s.name, part_md5s=md5s[:1]))
    with pytest.raises(pylon.InvalidArgumentError, match=r"part_md5s\[0\].*hex"):
        acme.call(acme.ingest.CommitUploadSession, req(name=s.name, part_md5s=["XYZ"] + md5s[1:]))
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("md5-at-commit")
    time.sleep(1.1)  # SeaweedFS keeps the newest upload of a part number: distinct seconds
    put(s.parts[1].url, data[5 * MiB:10 * MiB])
    op = acme.call(acme.ingest.CommitUploadSession, req(name=s.name, part_md5s=md5s)).operation
    assert not acme.datasets.wait(op.name).failed
    # MD5s given at creation and different ones at commit: refused.
    t = _session(acme, "md5-at-commit", data + b'{"text": "new bytes"}\n')  # not held yet
    with pytest.raises(pylon.InvalidArgumentError, match="differs from the MD5 declared"):
        acme.call(acme.ingest.CommitUploadSession, req(name=t.name, part_md5s=["0" * 32] * len(md5s)))


def part_hashes_of(data: bytes, part_size: int) -> tuple[str, list[str]]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), [hashlib.md5(data[i:i + part_size]).hexdigest()
                                                           for i in range(0, len(data), part_size)]


def test_missing_parts_and_a_lying_digest_leave_nothing_visible(acme, ingest):
    data = b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(1000))
    s = _session(acme, "lying", data)
    with pytest.raises(pylon.InvalidArgumentError, match="1 of 1 parts not uploaded"):
        _commit(acme, s)
    # Parts match their MD5s but the declared sha256 is wrong: the processing pass catches it.
    s = _session(acme, "lying", data, digest="sha256:" + "ab" * 32)
    put(s.parts[0].url, data)
    op = acme.datasets.wait(_commit(acme, s).name)
    assert op.failed and "hash to sha256:" in op.error_message
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("lying", 1)
    store = ingest.store()
    assert not list(store.iter_all("tenants/acme/uploads/" + s.name.rsplit("/", 1)[1]))
    assert not store.exists("tenants/acme/blobs/sha256/" + "ab" * 32)


def test_two_clients_committing_the_same_version_one_wins(acme, ingest):
    data = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(100))
    s = _session(acme, "race", data)
    put(s.parts[0].url, data)
    first = _commit(acme, s, request_id="client-a")
    assert _commit(acme, s, request_id="client-a").name == first.name  # a retry gets the same op
    with pytest.raises(pylon.AlreadyExistsError, match="already committed"):
        _commit(acme, s, request_id="client-b")
    assert not acme.datasets.wait(first.name).failed
    # Two sessions both asking for version 2: exactly one publishes it.
    a, b = _session(acme, "race", data), _session(acme, "race", data + b'{"text": "more"}\n')
    put(b.parts[0].url, data + b'{"text": "more"}\n')
    ops = [_commit(acme, a, version=2), _commit(acme, b, version=2)]
    done = [acme.datasets.wait(o.name) for o in ops]
    assert sorted(o.failed for o in done) == [False, True]
    loser = next(o for o in done if o.failed)
    assert loser.error_code == 6 and "versions/2 already exists" in loser.error_message
    with pytest.raises(pylon.AlreadyExistsError):
        _commit(acme, _session(acme, "race", data), version=2)
    assert acme.datasets.get("race").latest_version == 2


def test_another_tenants_dataset_session_and_operation_are_not_found(acme, ingest, tmp_path):
    v = acme.datasets.upload(jsonl(tmp_path / "p.jsonl", 50), "private")
    data = b'{"text": "x"}\n'
    s = _session(acme, "private", data)
    with ingest.client("globex") as globex:
        for call in (lambda: globex.datasets.get("tenants/acme/datasets/private"),
                     lambda: globex.datasets.get("tenants/acme/datasets/private", 1),
                     lambda: globex.datasets.preview("tenants/acme/datasets/private", 1),
                     lambda: list(globex.datasets.rejects("tenants/acme/datasets/private", 1)),
                     lambda: globex.datasets.operation(v.operation and f"tenants/acme/operations/{v.operation}"),
                     lambda: globex.call(globex.ingest.GetUploadSession,
                                         ingest_pb2.GetUploadSessionRequest(name=s.name)),
                     lambda: globex.datasets.tokenize("tenants/acme/datasets/private", 1)):
            with pytest.raises(pylon.NotFoundError):
                call()
        # A session name written with globex's own tenant is still not acme's session.
        with pytest.raises(pylon.NotFoundError):
            globex.call(globex.ingest.GetUploadSession, ingest_pb2.GetUploadSessionRequest(
                name=s.name.replace("tenants/acme", "tenants/globex")))
