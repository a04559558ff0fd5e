"""IngestService transport: name parsing, stream handling and proto conversion; the use cases
live in ``domain/service.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from pylon.ingest.v1 import ingest_pb2 as pb
from pylon.ingest.v1 import ingest_pb2_grpc
from pylon_services.common.errors import InvalidArgument, PylonError
from pylon_services.common.limits import MAX_LABELS, quote
from pylon_services.common.names import check_id, parse_name, parse_parent
from pylon_services.ingest.api import convert as cv
from pylon_services.ingest.domain.checks import check_header, processing_options
from pylon_services.ingest.domain.datasets import Spool
from pylon_services.ingest.domain.service import Ingest
from pylon_services.runtime.context import principal
from pylon_services.runtime.protoconv import page_size

_DS = ("tenants", "datasets")
_VER = ("tenants", "datasets", "versions")


def _error_from(op: Any) -> PylonError:
    """The typed error a failed operation carries, for calls that wait for it."""
    from pylon_services.common import errors

    cls = next((c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, PylonError)
                and c.code_name == op.error_code), errors.Internal)
    return cls(op.error_message)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingest: Ingest, max_upload_bytes: int) -> None:
        self._i = ingest
        self._d = ingest.datasets
        self._max = max_upload_bytes

    # -- streamed upload ------------------------------------------------------------------------------
    async def UploadDatasetVersion(self, request_iterator: AsyncIterator[pb.UploadDatasetVersionRequest],
                                   context: grpc.aio.ServicerContext) -> pb.UploadDatasetVersionResponse:
        p = principal()
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument.field("header", "the first message of the stream must be an UploadHeader")
        tenant, dataset = parse_name("header.dataset", first.header.dataset, _DS, p)
        h = cv.header(first.header)
        check_id("header.dataset", dataset)
        check_header("header", h)
        h["processing"] = processing_options(h["processing"])
        if h["digest"] and not (h["digest"].startswith("sha256:") and len(h["digest"]) == 71):
            raise InvalidArgument.field("header.digest", "must be 'sha256:' followed by 64 hex digits")
        spool = Spool(self._max)
        try:
            index = 0
            async for msg in request_iterator:
                if not msg.HasField("chunk"):
                    raise InvalidArgument.field(f"message[{index + 1}]", "only the first message may be a header")
                spool.write(msg.chunk.data, msg.chunk.crc32c, index)
                index += 1
            digest = spool.finish()
            if h["digest"] and h["digest"] != digest:
                raise InvalidArgument.field("header.digest", f"expected {quote(h['digest'], 80)}, received bytes hash "
                                                             f"to {digest}")
            if h["size"] and h["size"] != spool.size:
                raise InvalidArgument.field("header.size_bytes", f"expected {h['size']} bytes, received {spool.size}")
            op, held = await self._i.upload_streamed(tenant, p.key_id, dataset, h, spool.path, digest, spool.size)
        finally:
            spool.discard()
        if op.error_code:
            raise _error_from(op)
        _, d, v = op.result.split("/")[1::2]
        doc = await self._i.version(tenant, d, v)
        return pb.UploadDatasetVersionResponse(version=cv.version_pb(doc), deduplicated=held,
                                               operation=cv.operation_pb(op))

    # -- upload sessions --------------------------------------------------------------------------------
    async def CreateUploadSession(self, request: pb.CreateUploadSessionRequest,
                                  context: grpc.aio.ServicerContext) -> pb.CreateUploadSessionResponse:
        p = principal()
        tenant, dataset = parse_name("header.dataset", request.header.dataset, _DS, p)
        s, urls = await self._i.create_session(tenant, p.key_id, dataset, cv.header(request.header),
                                               request.part_size_bytes, list(request.part_md5s))
        return pb.CreateUploadSessionResponse(session=cv.session_pb(s, urls, {}))

    async def GetUploadSession(self, request: pb.GetUploadSessionRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetUploadSessionResponse:
        tenant, sid = parse_name("name", request.name, ("tenants", "uploadSessions"), principal())
        s, stored, urls = await self._i.get_session(tenant, sid)
        return pb.GetUploadSessionResponse(session=cv.session_pb(s, urls, stored))

    async def CommitUploadSession(self, request: pb.CommitUploadSessionRequest,
                                  context: grpc.aio.ServicerContext) -> pb.CommitUploadSessionResponse:
        tenant, sid = parse_name("name", request.name, ("tenants", "uploadSessions"), principal())
        op = await self._i.commit_session(tenant, sid, request.request_id, request.version, list(request.part_md5s))
        return pb.CommitUploadSessionResponse(operation=cv.operation_pb(op))

    async def AbortUploadSession(self, request: pb.AbortUploadSessionRequest,
                                 context: grpc.aio.ServicerContext) -> pb.AbortUploadSessionResponse:
        tenant, sid = parse_name("name", request.name, ("tenants", "uploadSessions"), principal())
        await self._i.abort_session(tenant, sid)
        return pb.AbortUploadSessionResponse()

    async def ImportDatasetVersion(self, request: pb.ImportDatasetVersionRequest,
                                   context: grpc.aio.ServicerContext) -> pb.ImportDatasetVersionResponse:
        p = principal()
        tenant, dataset = parse_name("dataset", request.dataset, _DS, p)
        first = request.source_uris[0].rsplit("/", 1)[-1] if request.source_uris else ""
        fmt, comp = cv.file_format("", first, request.format, request.compression)
        op = await self._i.import_objects(tenant, p.key_id, dataset, list(request.source_uris), fmt, comp,
                                          request.by_reference, cv.processing(request.processing), request.request_id,
                                          request.description)
        return pb.ImportDatasetVersionResponse(operation=cv.operation_pb(op))

    # -- datasets and versions --------------------------------------------------------------------------
    async def CreateDataset(self, request: pb.CreateDatasetRequest,
                            context: grpc.aio.ServicerContext) -> pb.CreateDatasetResponse:
        p = principal()
        tenant = parse_parent("parent", request.parent, p)
        labels: dict[str, str] = {}
        if len(request.labels) > MAX_LABELS:
            raise InvalidArgument.field("labels", f"at most {MAX_LABELS} entries (got {len(request.labels)})")
        for i, label in enumerate(request.labels):
            if label.key in labels:
                raise InvalidArgument.field(f"labels[{i}]", f"duplicate label key {quote(label.key, 32)}")
            labels[label.key] = label.value
        doc = await self._i.create_dataset(tenant, p.key_id, request.dataset_id, request.description, labels,
                                           request.request_id)
        return pb.CreateDatasetResponse(dataset=cv.dataset_pb(doc))

    async def DeleteDataset(self, request: pb.DeleteDatasetRequest,
                            context: grpc.aio.ServicerContext) -> pb.DeleteDatasetResponse:
        tenant, dataset = parse_name("name", request.name, _DS, principal())
        await self._i.delete_dataset(tenant, dataset, request.etag)
        return pb.DeleteDatasetResponse()

    async def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.aio.ServicerContext) -> pb.GetDatasetResponse:
        tenant, dataset = parse_name("name", request.name, _DS, principal())
        return pb.GetDatasetResponse(dataset=cv.dataset_pb(await asyncio.to_thread(self._d.get_dataset, tenant, dataset)))

    async def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.aio.ServicerContext) -> pb.ListDatasetsResponse:
        tenant = parse_parent("parent", request.parent, principal())
        docs, token = await asyncio.to_thread(self._d.list_datasets, tenant, page_size(request.page_size),
                                              request.page_token or None)
        return pb.ListDatasetsResponse(datasets=[cv.dataset_pb(d) for d in docs], next_page_token=token or "")

    async def GetDatasetVersion(self, request: pb.GetDatasetVersionRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetDatasetVersionResponse:
        tenant, dataset, version = parse_name("name", request.name, _VER, principal())
        return pb.GetDatasetVersionResponse(version=cv.version_pb(await self._i.version(tenant, dataset, version)))

    async def ListDatasetVersions(self, request: pb.ListDatasetVersionsRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ListDatasetVersionsResponse:
        tenant, dataset = parse_name("parent", request.parent, _DS, principal())
        docs, token = await asyncio.to_thread(self._d.list_versions, tenant, dataset, page_size(request.page_size),
                                              request.page_token or None)
        return pb.ListDatasetVersionsResponse(versions=[cv.version_pb(d) for d in docs], next_page_token=token or "")

    async def PreviewDatasetVersion(self, request: pb.PreviewDatasetVersionRequest,
                                    context: grpc.aio.ServicerContext) -> pb.PreviewDatasetVersionResponse:
        tenant, dataset, version = parse_name("name", request.name, _VER, principal())
        if request.limit < 0:
            raise InvalidArgument.field("limit", "must not be negative")
        records = await self._i.preview(tenant, dataset, version, request.limit)
        return pb.PreviewDatasetVersionResponse(records=cv.records_pb(records))

    async def ListRejects(self, request: pb.ListRejectsRequest, context: grpc.aio.ServicerContext) -> pb.ListRejectsResponse:
        tenant, dataset, version = parse_name("name", request.name, _VER, principal())
        rows, token = await self._i.rejects(tenant, dataset, version, page_size(request.page_size), request.page_token)
        return pb.ListRejectsResponse(rejects=[pb.Reject(**r) for r in rows], next_page_token=token)

    # -- tokenization ----------------------------------------------------------------------------------
    async def TokenizeDatasetVersion(self, request: pb.TokenizeDatasetVersionRequest,
                                     context: grpc.aio.ServicerContext) -> pb.TokenizeDatasetVersionResponse:
        p = principal()
        tenant, dataset, version = parse_name("name", request.name, _VER, p)
        op = await self._i.tokenize(tenant, p.key_id, dataset, version, request.tokenizer, request.vocab_size,
                                    request.shard_tokens, request.request_id)
        return pb.TokenizeDatasetVersionResponse(operation=cv.operation_pb(op))

    async def GetTokenization(self, request: pb.GetTokenizationRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetTokenizationResponse:
        tenant, dataset, version, tok = parse_name(
            "name", request.name, ("tenants", "datasets", "versions", "tokenizations"), principal())
        doc = await self._i.tokenization(tenant, dataset, version, tok)
        return pb.GetTokenizationResponse(tokenization=cv.tokenization_pb(doc))

    # -- operations --------------------------------------------------------------------------------------
    async def GetOperation(self, request: pb.GetOperationRequest, context: grpc.aio.ServicerContext) -> pb.GetOperationResponse:
        p = principal()
        tenant, op_id = parse_name("name", request.name, ("tenants", "operations"), p)
        return pb.GetOperationResponse(operation=cv.operation_pb(await self._i.get_operation(tenant, op_id, p.is_admin)))

    async def WatchOperation(self, request: pb.WatchOperationRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchOperationResponse]:
        p = principal()
        tenant, op_id = parse_name("name", request.name, ("tenants", "operations"), p)
        async for op in self._i.watch(tenant, op_id, p.is_admin):
            yield pb.WatchOperationResponse(operation=cv.operation_pb(op))
