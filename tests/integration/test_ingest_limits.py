"""Ingest's API boundary through a real ingest on SeaweedFS, Redis and Ray: one file-name rule on
every upload path, inputs checked with the field named (never INTERNAL), bounded page tokens,
and WatchOperation shared among hundreds of watchers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import google_crc32c
import grpc
import pytest
import redis
import redis.asyncio as aioredis

import pylon
from pylon.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from tests.support.ingest_server import ingest_fixtures

pytestmark = pytest.mark.integration

ingest, acme = ingest_fixtures(db=8)
DIGEST = "sha256:" + "0" * 64
BAD_NAMES = ["a\x00b.jsonl", "a\x01b.jsonl", "a\u2028b.jsonl", "x" * 300 + ".jsonl", "a/b.jsonl", "..", ".hidden.jsonl",
             "a\\b.jsonl", ""]


def _streamed(c: Any, path: str, data: bytes = b'{"text": "hi"}\n', **header: Any) -> Any:
    def messages() -> Any:
        yield ingest_pb2.UploadDatasetVersionRequest(header=ingest_pb2.UploadHeader(
            dataset="tenants/-/datasets/names", path=path, **header))
        yield ingest_pb2.UploadDatasetVersionRequest(chunk=ingest_pb2.UploadChunk(
            data=data, crc32c=google_crc32c.value(data)))

    return c.ingest.UploadDatasetVersion(messages(), metadata=c.metadata(), timeout=60)


@pytest.mark.parametrize("name", BAD_NAMES, ids=[f"name{i}" for i in range(len(BAD_NAMES))])
def test_every_upload_path_refuses_the_same_file_names(acme: Any, name: str) -> None:
    """Streamed uploads accepted names that direct uploads refused; now one rule (common.paths)."""
    with pytest.raises(grpc.RpcError) as e:
        _streamed(acme, name)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header.path" in e.value.details()
    with pytest.raises(pylon.InvalidArgumentError) as direct:
        acme.call(acme.ingest.CreateUploadSession, ingest_pb2.CreateUploadSessionRequest(header=ingest_pb2.UploadHeader(
            dataset="tenants/-/datasets/names", path=name, size_bytes=10, digest=DIGEST)))
    assert direct.value.violations[0].field == "header.path"
    if name and "/" not in name:  # an import names an object key; its last segment is the file name
        with pytest.raises(pylon.InvalidArgumentError) as imported:
            acme.call(acme.ingest.ImportDatasetVersion, ingest_pb2.ImportDatasetVersionRequest(
                dataset="tenants/-/datasets/names", source_uris=[f"tenants/acme/in/{name}"]))
        assert imported.value.violations[0].field.startswith("source_uris[0]")


def test_inputs_that_used_to_be_internal_are_invalid_argument(acme: Any, ingest: Any) -> None:
    version = acme.datasets.upload(_file(ingest, b'{"text": "one"}\nnot json\n'), "checked", max_reject_rate=1.0)
    name = version.name
    cases: list[tuple[str, str, Any]] = [
        ("name", "GetDatasetVersion", ingest_pb2.GetDatasetVersionRequest(name=name.rsplit("/", 1)[0] + "/\u00b2")),
        ("name", "GetDatasetVersion", ingest_pb2.GetDatasetVersionRequest(name=name.rsplit("/", 1)[0] + "/" + "1" * 5000)),
        ("page_token", "ListDatasetVersions", ingest_pb2.ListDatasetVersionsRequest(
            parent="tenants/-/datasets/checked", page_token="\u00b2")),
        ("page_token", "ListDatasetVersions", ingest_pb2.ListDatasetVersionsRequest(
            parent="tenants/-/datasets/checked", page_token="1" + "0" * 20)),
        ("page_token", "ListRejects", ingest_pb2.ListRejectsRequest(name=name, page_token="0:\u00b2")),
        ("page_token", "ListDatasets", ingest_pb2.ListDatasetsRequest(page_token="tenants/globex/datasets/")),
        ("etag", "DeleteDataset", ingest_pb2.DeleteDatasetRequest(name="tenants/-/datasets/checked", etag="e" * 100_000)),
        ("request_id", "TokenizeDatasetVersion", ingest_pb2.TokenizeDatasetVersionRequest(name=name, request_id="../x")),
        ("tokenizer", "TokenizeDatasetVersion", ingest_pb2.TokenizeDatasetVersionRequest(name=name, tokenizer="t" * 5000)),
        ("source_uris", "ImportDatasetVersion", ingest_pb2.ImportDatasetVersionRequest(
            dataset="tenants/-/datasets/checked", source_uris=[f"tenants/acme/in/{i}.jsonl" for i in range(1001)])),
        ("source_uris[0]", "ImportDatasetVersion", ingest_pb2.ImportDatasetVersionRequest(
            dataset="tenants/-/datasets/checked", source_uris=["tenants/acme/../globex/x.jsonl"])),
        ("header.description", "CreateUploadSession", ingest_pb2.CreateUploadSessionRequest(
            header=ingest_pb2.UploadHeader(dataset="tenants/-/datasets/checked", path="d.jsonl", size_bytes=10,
                                           digest=DIGEST, description="d" * (1 << 20)))),
        ("processing.recipe.max_chars", "CreateUploadSession", ingest_pb2.CreateUploadSessionRequest(
            header=ingest_pb2.UploadHeader(dataset="tenants/-/datasets/checked", path="d.jsonl", size_bytes=10,
                                           digest=DIGEST, processing=ingest_pb2.ProcessingOptions(
                                               recipe=ingest_pb2.CleaningRecipe(max_chars=2**31 - 1))))),
    ]
    _all_invalid(acme, cases)
    from pylon_services.common import paging

    _all_invalid(acme, [  # well formed tokens naming positions that do not exist
        ("page_token", "ListDatasetVersions", ingest_pb2.ListDatasetVersionsRequest(
            parent="tenants/-/datasets/checked",
            page_token=paging.encode_token("numbered", 10**12, "tenants/acme/datasets/checked/versions/"))),
        ("page_token", "ListRejects", ingest_pb2.ListRejectsRequest(
            name=name, page_token=paging.encode_token("rejects", "7:0", name)))])


def _all_invalid(acme: Any, cases: list[tuple[str, str, Any]]) -> None:
    for field, method, request in cases:
        with pytest.raises(pylon.PylonError) as e:
            acme.call(getattr(acme.ingest, method), request, timeout=20)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, (field, e.value)
        assert e.value.violations and e.value.violations[0].field == field, (field, e.value.violations)
        assert len(e.value.message) < 1100, field


def test_an_explicit_version_number_stays_near_the_latest(acme: Any, ingest: Any) -> None:
    """Publishing version 10^15 would leave a gap no listing could walk; a commit may name a
    version at most 1000 above the latest."""
    data = b'{"text": "x"}\n'
    s = _session(acme, "numbered", data)
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.call(acme.ingest.CommitUploadSession, ingest_pb2.CommitUploadSessionRequest(name=s.name, version=10**15))
    assert e.value.violations[0].field == "version"


def test_a_schema_bigger_than_64_kib_is_refused(acme: Any) -> None:
    schema = {"fields": {f"f{i}": {"type": ["string"], "required": False} for i in range(3000)}}
    opts = ingest_pb2.ProcessingOptions()
    opts.schema.update(schema)
    with pytest.raises(pylon.InvalidArgumentError) as e:
        _streamed_ok(acme, processing=opts)
    assert e.value.violations[0].field == "processing.schema"


def _streamed_ok(c: Any, **header: Any) -> Any:
    try:
        return _streamed(c, "d.jsonl", **header)
    except grpc.RpcError as err:
        from pylon.errors import from_rpc_error

        raise from_rpc_error(err) from None


def _session(c: Any, dataset: str, data: bytes) -> Any:
    import hashlib

    header = ingest_pb2.UploadHeader(dataset=f"tenants/-/datasets/{dataset}", path="d.jsonl", size_bytes=len(data),
                                     digest="sha256:" + hashlib.sha256(data).hexdigest())
    return c.call(c.ingest.CreateUploadSession, ingest_pb2.CreateUploadSessionRequest(header=header)).session


def _file(ingest: Any, data: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)
    f.write(data)
    f.close()
    return f.name


def test_five_hundred_watchers_of_one_operation_share_one_reader(ingest: Any) -> None:
    """Every WatchOperation held its own Redis subscription; 500 watchers now cost one reader
    (and one process-wide subscription), and every one of them sees the operation finish."""
    from pylon_services.ingest.domain.operations import RUNNING, new_operation
    from pylon_services.ingest.store.redis_state import RedisState

    op = new_operation("acme", "process", "tenants/acme/datasets/watched", {"dataset": "watched", "files": []})
    op.state = RUNNING
    sync = redis.Redis.from_url(ingest.settings.redis_url)
    baseline = int(sync.info("clients")["connected_clients"])

    async def main() -> tuple[list[list[str]], int]:
        r = aioredis.from_url(ingest.settings.redis_url)
        state = RedisState(r)
        await state.acquire_lease(op.id, "another-replica", 600)  # so this ingest does not adopt it
        await state.save(op)
        seen: list[list[str]] = [[] for _ in range(500)]
        ready = asyncio.Event()
        async with grpc.aio.insecure_channel(ingest.address) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            md = (("authorization", f"Bearer {ingest.tokens['acme']}"),)

            async def watch(i: int) -> None:
                call = stub.WatchOperation(ingest_pb2.WatchOperationRequest(name=op.name), metadata=md, timeout=60)
                async for resp in call:
                    seen[i].append(resp.operation.metadata["state"])
                    if sum(1 for s in seen if s) == 500:
                        ready.set()

            tasks = [asyncio.create_task(watch(i)) for i in range(500)]
            await asyncio.wait_for(ready.wait(), 60)
            during = int(sync.info("clients")["connected_clients"])
            op.progress = 0.5
            op.metadata["step"] = "half"
            await state.save(op)
            await asyncio.sleep(0.5)
            op.succeed("tenants/acme/datasets/watched/versions/1")
            await state.save(op)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await state.release_lease(op.id, "another-replica")
        await r.aclose()
        return seen, during

    started = time.monotonic()
    seen, during = asyncio.run(main())
    assert all(s and s[0] == "running" and s[-1] == "succeeded" for s in seen)
    assert during - baseline < 20, (baseline, during)  # not one connection per watcher
    assert time.monotonic() - started < 60
