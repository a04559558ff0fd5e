"""Processing and tokenization as operations on Ray, through a real ingest on SeaweedFS + Redis:
Watch, reject-rate failures that leave nothing, imports, formats, tokenization into shards."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import pylon
from pylon.ingest.v1 import ingest_pb2
from tests.conftest import TEST_BUCKET
from tests.integration.test_ingest_uploads import jsonl
from tests.support.ingest_server import ingest_fixtures

pytestmark = pytest.mark.integration


ingest, acme = ingest_fixtures(db=8)


def test_watch_streams_progress_until_done(acme, tmp_path):
    path = jsonl(tmp_path / "w.jsonl", 200_000, width=200)  # ~ 25 MB: several progress updates
    op = acme.datasets.upload(path, "watched", wait=False)
    seen = list(acme.datasets.watch(op.name, timeout=300))
    assert seen[-1].done and not seen[-1].failed and seen[-1].progress == 1.0
    assert all(not o.done for o in seen[:-1]) and len(seen) >= 2
    assert any(0 < o.progress < 1 for o in seen), [o.progress for o in seen]
    assert seen[-1].result == "tenants/acme/datasets/watched/versions/1"
    assert seen[-1].metadata["records_out"] == 200_000
    assert acme.datasets.operation(op.name).done


def test_reject_rate_over_the_limit_fails_with_counts_and_leaves_nothing(acme, ingest, tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", 1000, bad_every=4)  # 25% malformed
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.datasets.upload(path, "mostly-bad", max_reject_rate=0.1)
    assert "250 of 1000 records rejected" in e.value.message and "line 4: malformed_json" in e.value.message
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("mostly-bad")
    store = ingest.store()
    assert not list(store.iter_all("tenants/acme/datasets/mostly-bad/"))
    assert not list(store.iter_all("tenants/acme/uploads/"))  # staging bytes removed
    # The same file with a tolerant limit is accepted, with the rejects quarantined.
    v = acme.datasets.upload(path, "mostly-bad", max_reject_rate=0.3)
    assert (v.version, v.record_count, v.reject_count) == (1, 750, 250)


def test_streamed_upload_with_chunk_checksums_and_recipe(acme, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Hello   World\ncontact me at bob@example.com\nHello World\n\nshort\n")
    v = acme.datasets.upload(str(path), "notes", direct=False, recipe={"scrub_email": True, "min_chars": 6},
                             max_reject_rate=0.5)
    assert v.source == "upload:grpc" and v.record_count == 2
    assert v.dropped == {"duplicate": 1, "too_short": 1}, v.dropped
    assert "scrub_email" in v.cleaning and v.recipe["min_chars"] == 6
    texts = [r["text"] for r in acme.datasets.preview("notes", 1)]
    assert texts[0] == "Hello World" and "bob@example.com" not in texts[1]


def test_gzip_csv_and_import_of_objects_already_in_the_bucket(acme, ingest, tmp_path):
    store = ingest.store()
    lines = "\n".join(f"{i},row number {i}" for i in range(500))
    store.put("tenants/acme/imports/a.csv.gz", gzip.compress(("id,text\n" + lines + "\n").encode()))
    store.put("tenants/acme/imports/b.jsonl", b"".join(json.dumps({"text": f"b {i}"}).encode() + b"\n"
                                                       for i in range(300)))
    v = acme.datasets.import_objects(["tenants/acme/imports/a.csv.gz"], "imported")
    assert v.record_count == 500 and v.files[0]["compression"] == "COMPRESSION_GZIP"
    assert v.files[0]["object_key"].startswith("tenants/acme/blobs/sha256/")
    uri = f"s3://{TEST_BUCKET}/{store.prefix}tenants/acme/imports/b.jsonl"
    ref = acme.datasets.import_objects([uri], "imported", by_reference=True)
    assert ref.version == 2 and ref.files[0]["object_key"] == "tenants/acme/imports/b.jsonl"
    with pytest.raises(pylon.PermissionDeniedError):
        acme.datasets.import_objects(["tenants/globex/secret.jsonl"], "imported")
    with pytest.raises(pylon.PermissionDeniedError):
        acme.datasets.import_objects(["s3://other-bucket/tenants/acme/x.jsonl"], "imported")
    with pytest.raises(pylon.NotFoundError, match="does not exist"):
        acme.datasets.import_objects(["tenants/acme/imports/missing.jsonl"], "imported")


def test_files_of_one_import_are_processed_in_parallel_and_deduped_across_files(acme, ingest):
    store = ingest.store()
    keys = []
    for i in range(3):
        key = f"tenants/acme/multi/part{i}.jsonl"
        own = [f"file {i} rec {j}" for j in range(400)]
        shared = [f"in every file {j}" for j in range(50)]  # only the first file keeps these
        store.put(key, b"".join(json.dumps({"text": t}).encode() + b"\n" for t in own + shared + own[:5]))
        keys.append(key)
    v = acme.datasets.import_objects(keys, "multi")
    assert [f["path"] for f in v.files] == ["part0.jsonl", "part1.jsonl", "part2.jsonl"]
    assert [int(f["record_count"]) for f in v.processed_files] == [450, 400, 400]
    assert v.record_count == 1250 and v.dropped == {"duplicate": 15 + 100}
    texts = [json.loads(line)["text"] for f in v.processed_files
             for line in store.get(f["object_key"]).splitlines()]
    assert len(texts) == len(set(texts)) == 1250
    assert not [o.key for o in store.iter_all("tenants/acme/datasets/multi/processed/") if o.key.endswith(".dedupe")]


def test_tokenize_writes_shards_linked_to_version_and_tokenizer_and_reuses_it(acme, ingest, tmp_path):
    from pylon.data import ShardReader

    path = tmp_path / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(3000):
            f.write(json.dumps({"text": f"the quick brown fox {i} jumps over the lazy dog number {i % 97}"}) + "\n")
    v = acme.datasets.upload(str(path), "tok")
    t = acme.datasets.tokenize("tok", 1, tokenizer="tok-bpe", vocab_size=600, shard_tokens=4096)
    assert t.name == "tenants/acme/datasets/tok/versions/1/tokenizations/tok-bpe"
    assert (t.dataset_version, t.dataset_digest) == (v.name, v.digest)
    assert t.tokenizer == "tenants/acme/tokenizers/tok-bpe" and t.dtype == "uint16"
    store = ingest.store()
    index = json.loads(store.get(t.index_object_key))
    assert index["total_tokens"] == t.total_tokens > 3000 and len(index["shards"]) == t.shard_count > 1
    reader = ShardReader(store, t.shard_prefix, seq_len=64, batch_size=2, shuffle=False)
    batch = next(iter(reader))
    assert batch.shape == (2, 64) and int(np.max(batch)) < 600
    # A second version tokenized with the stored tokenizer reuses it (no training).
    acme.datasets.upload(str(path), "tok")
    op = acme.datasets.tokenize("tok", 2, tokenizer="tok-bpe", wait=False)
    op = acme.datasets.wait(op.name)
    assert op.metadata["trained"] is False
    t2 = acme.datasets.tokenize("tok", 2, tokenizer="tok-bpe")
    assert t2.tokenizer_digest == t.tokenizer_digest
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.tokenize("tok", 9)
    with pytest.raises(pylon.InvalidArgumentError, match="vocab_size"):
        acme.datasets.tokenize("tok", 1, tokenizer="other", vocab_size=10)


def test_bad_requests_get_the_right_codes(acme, ingest):
    call = acme.call
    with pytest.raises(pylon.InvalidArgumentError, match="digest"):
        call(acme.ingest.CreateUploadSession, ingest_pb2.CreateUploadSessionRequest(header=ingest_pb2.UploadHeader(
            dataset="tenants/-/datasets/x", path="a.jsonl", size_bytes=10)))
    with pytest.raises(pylon.InvalidArgumentError, match="part_size_bytes"):
        call(acme.ingest.CreateUploadSession, ingest_pb2.CreateUploadSessionRequest(header=ingest_pb2.UploadHeader(
            dataset="tenants/-/datasets/x", path="a.jsonl", size_bytes=10, digest="sha256:" + "0" * 64),
            part_size_bytes=1024))
    with pytest.raises(pylon.InvalidArgumentError, match="max_reject_rate"):
        call(acme.ingest.CreateUploadSession, ingest_pb2.CreateUploadSessionRequest(header=ingest_pb2.UploadHeader(
            dataset="tenants/-/datasets/x", path="a.jsonl", size_bytes=10, digest="sha256:" + "0" * 64,
            processing=ingest_pb2.ProcessingOptions(max_reject_rate=2))))
    with pytest.raises(pylon.InvalidArgumentError, match="path"):
        call(acme.ingest.CreateUploadSession, ingest_pb2.CreateUploadSessionRequest(header=ingest_pb2.UploadHeader(
            dataset="tenants/-/datasets/x", path="../a.jsonl", size_bytes=10, digest="sha256:" + "0" * 64)))
    with pytest.raises(pylon.NotFoundError):
        call(acme.ingest.GetUploadSession, ingest_pb2.GetUploadSessionRequest(name="tenants/acme/uploadSessions/up0"))
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.operation("tenants/acme/operations/op0")
    with pytest.raises(pylon.InvalidArgumentError):
        acme.datasets.operation("operations/op0")
    with ingest.client("viewer") as viewer, pytest.raises(pylon.PermissionDeniedError):
        viewer.datasets.import_objects(["tenants/acme/x.jsonl"], "x")


def test_cli_data_upload_rejects_preview_tokenize(ingest, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pylon.cli import app

    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    path = jsonl(tmp_path / "cli.jsonl", 500, bad_every=50)
    base = ["--address", ingest.address, "--token", ingest.tokens["acme"]]
    run = CliRunner().invoke
    up = run(app, [*base, "datasets", "upload", str(path), "--name", "cli", "--max-reject-rate", "0.05", "--json"])
    assert up.exit_code == 0, up.output
    assert json.loads(up.output)["record_count"] == 490
    rej = run(app, [*base, "datasets", "rejects", "cli", "--version", "1", "--json"])
    assert [r["line"] for r in json.loads(rej.output)] == list(range(50, 501, 50))
    pre = run(app, [*base, "datasets", "preview", "cli", "--limit", "2", "--json"])
    assert [r["id"] for r in json.loads(pre.output)] == [0, 1]
    tok = run(app, [*base, "datasets", "tokenize", "cli", "--vocab-size", "300", "--shard-tokens", "1024", "--json"])
    assert tok.exit_code == 0, tok.output
    assert json.loads(tok.output)["name"].endswith("/versions/1/tokenizations/cli-v1")
    listed = run(app, [*base, "datasets", "list", "--json"])
    assert "tenants/acme/datasets/cli" in [d["name"] for d in json.loads(listed.output)]
