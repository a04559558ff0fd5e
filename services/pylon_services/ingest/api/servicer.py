"""IngestService transport: stream handling and proto conversion; logic lives in domain/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from pylon.ingest.v1 import ingest_pb2 as pb
from pylon.ingest.v1 import ingest_pb2_grpc
from pylon_services.common.errors import InvalidArgument
from pylon_services.common.names import parse_name, parse_parent
from pylon_services.ingest.domain.datasets import FORMATS, Datasets, Spool, UploadRequest
from pylon_services.runtime.context import principal
from pylon_services.runtime.protoconv import page_size, ts


def dataset_pb(d: dict[str, Any]) -> pb.Dataset:
    return pb.Dataset(name=d["name"], description=d.get("description", ""),
                      latest_version=d.get("latest_version", 0), create_time=ts(d.get("create_time")))


def version_pb(d: dict[str, Any]) -> pb.DatasetVersion:
    files = [pb.DatasetFile(path=f["path"], digest=f["digest"], size_bytes=f["size_bytes"],
                            format=FORMATS.index(f["format"]), compression=pb.COMPRESSION_NONE,
                            record_count=f["record_count"], object_key=f["object_key"]) for f in d["files"]]
    return pb.DatasetVersion(
        name=d["name"], version=d["version"], state=pb.DATASET_VERSION_STATE_READY, files=files,
        digest=d["digest"], record_count=d["record_count"], size_bytes=d["size_bytes"],
        cleaning=d.get("cleaning", []), parent=d.get("parent", ""), source=d.get("source", ""),
        creator=d.get("creator", ""), create_time=ts(d.get("create_time")))


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, datasets: Datasets, max_upload_bytes: int) -> None:
        self._d = datasets
        self._max = max_upload_bytes

    async def UploadDatasetVersion(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        p = principal()
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument.field("header", "the first message of the stream must be an UploadHeader")
        h = first.header
        tenant, dataset = parse_name("header.dataset", h.dataset, ("tenants", "datasets"), p)
        req = UploadRequest(tenant=tenant, dataset=dataset, path=h.path,
                            format=FORMATS[h.format] if h.format < len(FORMATS) else "?",
                            digest=h.digest, size_bytes=h.size_bytes, description=h.description,
                            request_id=h.request_id, creator=p.key_id)
        self._d.validate_upload(req)
        spool = Spool(self._max)
        try:
            index = 0
            async for msg in request_iterator:
                if not msg.HasField("chunk"):
                    raise InvalidArgument.field(f"message[{index + 1}]", "only the first message may be a header")
                spool.write(msg.chunk.data, msg.chunk.crc32c, index)
                index += 1
            digest = spool.finish()
            previous = await asyncio.to_thread(self._d.previous, req)
            if previous:
                return pb.UploadDatasetVersionResponse(version=version_pb(previous), deduplicated=True)
            doc, dedup = await asyncio.to_thread(self._d.commit, req, spool.path, digest, spool.size)
        finally:
            spool.discard()
        return pb.UploadDatasetVersionResponse(version=version_pb(doc), deduplicated=dedup)

    async def GetDataset(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, dataset = parse_name("name", request.name, ("tenants", "datasets"), principal())
        return pb.GetDatasetResponse(dataset=dataset_pb(await asyncio.to_thread(self._d.get_dataset, tenant, dataset)))

    async def ListDatasets(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = parse_parent("parent", request.parent, principal())
        docs, token = await asyncio.to_thread(self._d.list_datasets, tenant, page_size(request.page_size),
                                              request.page_token or None)
        return pb.ListDatasetsResponse(datasets=[dataset_pb(d) for d in docs], next_page_token=token or "")

    async def GetDatasetVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, dataset, version = parse_name("name", request.name, ("tenants", "datasets", "versions"), principal())
        doc = await asyncio.to_thread(self._d.get_version, tenant, dataset, version)
        return pb.GetDatasetVersionResponse(version=version_pb(doc))

    async def ListDatasetVersions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, dataset = parse_name("parent", request.parent, ("tenants", "datasets"), principal())
        docs, token = await asyncio.to_thread(self._d.list_versions, tenant, dataset, page_size(request.page_size),
                                              request.page_token or None)
        return pb.ListDatasetVersionsResponse(versions=[version_pb(d) for d in docs], next_page_token=token or "")
