"""RegistryService transport: validate and convert, check roles, then call the domain (in a
worker thread: the object store and the index client are synchronous)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ParamSpec, TypeVar

import google_crc32c
import grpc

from pylon.registry.v1 import registry_pb2 as pb
from pylon.registry.v1 import registry_pb2_grpc
from pylon_services.common.errors import InvalidArgument, NotFound, PermissionDenied
from pylon_services.common.limits import check_enum, check_int, quote
from pylon_services.common.names import Principal, check_version, is_version_number, parse_name, parse_parent
from pylon_services.registry.api.convert import alias_pb, model_pb, version_pb
from pylon_services.registry.domain import artifacts, rebuild
from pylon_services.registry.domain.artifacts import DeclaredFile
from pylon_services.registry.domain.layout import FORMAT_NUMBERS
from pylon_services.registry.domain.ports import AsyncIndexReads
from pylon_services.registry.domain.registry import Registry, VersionSpec, decorate
from pylon_services.registry.domain.uris import parse_model_uri
from pylon_services.runtime.auth import role_allows
from pylon_services.runtime.context import principal
from pylon_services.runtime.internal_auth import carries_internal_key
from pylon_services.runtime.protoconv import from_struct, page_size, struct, ts

_P = ParamSpec("_P")
_T = TypeVar("_T")
_VERSION = ("tenants", "models", "versions")
_MODEL = ("tenants", "models")
_ALIAS = ("tenants", "models", "aliases")
_UPLOAD = ("tenants", "models", "uploads")
_STREAM_CHUNK = 1 << 20
_STATE_NAMES = {pb.MODEL_VERSION_STATE_READY: "ready", pb.MODEL_VERSION_STATE_ARCHIVED: "archived"}
_MAX_VERSION = 9_999_999_999  # the largest number a version name can hold (10 digits)


def _need(p: Principal, role: str, what: str) -> None:
    if not role_allows(p.role, role):
        raise PermissionDenied(f"{what} needs the {role} role; this key is {p.role}")


def _number(field: str, ref: str) -> int:
    return int(check_version(field, ref, latest=False))


def _mask(paths: list[str], allowed: tuple[str, ...]) -> list[str]:
    if not paths:
        raise InvalidArgument.field("update_mask", f"must list the fields to change: {', '.join(allowed)}")
    bad = [x for x in paths if x not in allowed]
    if bad or len(paths) > len(allowed):
        raise InvalidArgument.field("update_mask", f"unknown, immutable or repeated fields {quote(bad)}; allowed: "
                                                   f"{', '.join(allowed)}")
    return paths


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, reader: AsyncIndexReads, internal_key: str = "") -> None:
        self._r = registry
        self._reader = reader
        self._internal_key = internal_key  # only the gateway, which holds it, records deployments

    async def _version(self, tenant: str, model: str, ref: str) -> dict[str, Any]:
        """The hot read path: exact numbers straight from the index on the event loop."""
        if not is_version_number(ref):
            return await self._do(self._r.get_version, tenant, model, ref)
        doc, aliases, deps = await self._reader.version_view(tenant, model, int(ref))
        if doc is None:
            raise NotFound(f"tenants/{tenant}/models/{model}/versions/{ref} not found")
        return decorate(doc, aliases, deps)

    async def _do(self, fn: Callable[_P, _T], *args: _P.args, **kw: _P.kwargs) -> _T:
        return await asyncio.to_thread(fn, *args, **kw)

    # -- models -------------------------------------------------------------------------------
    async def CreateModel(self, request: pb.CreateModelRequest, context: grpc.aio.ServicerContext) -> pb.CreateModelResponse:
        p = principal()
        tenant = parse_parent("parent", request.parent, p)
        doc = await self._do(self._r.create_model, tenant, request.model_id, description=request.description,
                             tags=dict(request.tags), creator=p.key_id, request_id=request.request_id)
        return pb.CreateModelResponse(model=model_pb(doc))

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        tenant, model = parse_name("name", request.name, _MODEL, principal())
        return pb.GetModelResponse(model=model_pb(await self._do(self._r.get_model, tenant, model)))

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        tenant = parse_parent("parent", request.parent, principal())
        models, token = await self._do(self._r.list_models, tenant, page_size(request.page_size),
                                       request.page_token or None, request.filter)
        return pb.ListModelsResponse(models=[model_pb(m) for m in models], next_page_token=token or "")

    async def UpdateModel(self, request: pb.UpdateModelRequest, context: grpc.aio.ServicerContext) -> pb.UpdateModelResponse:
        p = principal()
        tenant, model = parse_name("model.name", request.model.name, _MODEL, p)
        fields = _mask(list(request.update_mask), ("description", "tags", "protected_aliases"))
        if "protected_aliases" in fields:
            _need(p, "maintainer", "changing protected aliases")
        m = request.model
        values = {"description": m.description, "tags": dict(m.tags), "protected_aliases": sorted(set(m.protected_aliases))}
        doc = await self._do(self._r.update_model, tenant, model, {f: values[f] for f in fields}, m.etag)
        return pb.UpdateModelResponse(model=model_pb(doc))

    async def DeleteModel(self, request: pb.DeleteModelRequest, context: grpc.aio.ServicerContext) -> pb.DeleteModelResponse:
        p = principal()
        tenant, model = parse_name("name", request.name, _MODEL, p)
        _need(p, "maintainer", "deleting a model")
        await self._do(self._r.delete_model, tenant, model)
        return pb.DeleteModelResponse()

    # -- versions -----------------------------------------------------------------------------
    async def CreateModelVersion(self, request: pb.CreateModelVersionRequest,
                                 context: grpc.aio.ServicerContext) -> pb.CreateModelVersionResponse:
        p = principal()
        tenant, model = parse_name("parent", request.parent, _MODEL, p)
        source = request.source_uri
        if source and not source.startswith(f"tenants/{tenant}/"):
            raise InvalidArgument.field("source_uri", f"must be an object prefix inside tenants/{tenant}/")
        upload = ""
        if request.upload:
            t, m, upload = parse_name("upload", request.upload, _UPLOAD, p)
            if (t, m) != (tenant, model):
                raise InvalidArgument.field("upload", "belongs to another model")
        if bool(source) == bool(upload):
            raise InvalidArgument.field("source_uri", "give exactly one of source_uri and upload")
        fmt = FORMAT_NUMBERS[check_enum("format", request.format, FORMAT_NUMBERS)]
        lin = request.lineage
        spec = VersionSpec(
            source_prefix=source, upload=upload,
            files=[DeclaredFile(f.path, f.digest, f.size_bytes if f.size_bytes else -1) for f in request.files],
            format=fmt, config=from_struct(request.config), signature=from_struct(request.signature),
            metrics=dict(request.metrics), tags=dict(request.tags), description=request.description,
            request_id=request.request_id,
            lineage={"datasets": list(lin.datasets), "dataset_digests": list(lin.dataset_digests), "job": lin.job,
                     "checkpoint": lin.checkpoint or source, "base_model": lin.base_model})
        doc = await self._do(self._r.create_version, tenant, model, spec, p.key_id)
        return pb.CreateModelVersionResponse(version=version_pb(doc))

    async def GetModelVersion(self, request: pb.GetModelVersionRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetModelVersionResponse:
        tenant, model, version = parse_name("name", request.name, _VERSION, principal())
        return pb.GetModelVersionResponse(version=version_pb(await self._version(tenant, model, version)))

    async def ListModelVersions(self, request: pb.ListModelVersionsRequest,
                                context: grpc.aio.ServicerContext) -> pb.ListModelVersionsResponse:
        p = principal()
        if request.parent.endswith("/models/-"):
            tenant, model = parse_parent("parent", request.parent[: -len("/models/-")], p), "-"
        else:
            tenant, model = parse_name("parent", request.parent, _MODEL, p)
        docs, token = await self._do(self._r.list_versions, tenant, model, page_size(request.page_size),
                                     request.page_token or None, filter_text=request.filter,
                                     order_by=request.order_by, show_deleted=request.show_deleted)
        return pb.ListModelVersionsResponse(versions=[version_pb(d) for d in docs], next_page_token=token or "")

    async def UpdateModelVersion(self, request: pb.UpdateModelVersionRequest,
                                 context: grpc.aio.ServicerContext) -> pb.UpdateModelVersionResponse:
        p = principal()
        tenant, model, version = parse_name("version.name", request.version.name, _VERSION, p)
        fields = _mask(list(request.update_mask), ("tags", "description", "state"))
        v = request.version
        if "state" in fields and v.state not in _STATE_NAMES:  # READY or ARCHIVED; anything else refused
            raise InvalidArgument.field("version.state", "may be set to READY or ARCHIVED (use DeleteModelVersion)")
        values = {"tags": dict(v.tags), "description": v.description, "state": _STATE_NAMES.get(v.state, "")}
        doc = await self._do(self._r.update_version, tenant, model, _number("version.name", version),
                             {f: values[f] for f in fields}, v.etag, p.key_id)
        return pb.UpdateModelVersionResponse(version=version_pb(doc))

    async def DeleteModelVersion(self, request: pb.DeleteModelVersionRequest,
                                 context: grpc.aio.ServicerContext) -> pb.DeleteModelVersionResponse:
        p = principal()
        tenant, model, version = parse_name("name", request.name, _VERSION, p)
        _need(p, "maintainer", "deleting a version")
        await self._do(self._r.delete_version, tenant, model, _number("name", version), request.etag, p.key_id)
        return pb.DeleteModelVersionResponse()

    # -- aliases ------------------------------------------------------------------------------
    async def SetAlias(self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext) -> pb.SetAliasResponse:
        p = principal()
        tenant, model, alias = parse_name("name", request.name, _ALIAS, p)
        check_int("version", request.version, 1, _MAX_VERSION)
        doc = await self._do(self._r.set_alias, tenant, model, alias, request.version, request.etag, p.key_id,
                             may_move_protected=role_allows(p.role, "maintainer"))
        return pb.SetAliasResponse(alias=alias_pb(doc))

    async def GetAlias(self, request: pb.GetAliasRequest, context: grpc.aio.ServicerContext) -> pb.GetAliasResponse:
        tenant, model, alias = parse_name("name", request.name, _ALIAS, principal())
        return pb.GetAliasResponse(alias=alias_pb(await self._do(self._r.get_alias, tenant, model, alias)))

    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: grpc.aio.ServicerContext) -> pb.DeleteAliasResponse:
        p = principal()
        tenant, model, alias = parse_name("name", request.name, _ALIAS, p)
        await self._do(self._r.delete_alias, tenant, model, alias, request.etag, p.key_id,
                       may_move_protected=role_allows(p.role, "maintainer"))
        return pb.DeleteAliasResponse()

    async def ListAliasHistory(self, request: pb.ListAliasHistoryRequest,
                               context: grpc.aio.ServicerContext) -> pb.ListAliasHistoryResponse:
        tenant, model, alias = parse_name("name", request.name, _ALIAS, principal())
        moves, token = await self._do(self._r.alias_history, tenant, model, alias, page_size(request.page_size),
                                      request.page_token or None)
        return pb.ListAliasHistoryResponse(
            moves=[pb.AliasMove(from_version=m["from"], to_version=m["to"], actor=m["actor"], time=ts(m["time"]))
                   for m in moves], next_page_token=token or "")

    async def ResolveModelUri(self, request: pb.ResolveModelUriRequest,
                              context: grpc.aio.ServicerContext) -> pb.ResolveModelUriResponse:
        model, alias, version = parse_model_uri(request.uri)
        tenant = principal().tenant
        if alias:
            doc = await self._reader.alias(tenant, model, alias)
            if doc is None:
                raise NotFound(f"tenants/{tenant}/models/{model}/aliases/{alias} not found")
            version = str(doc["version"])
        return pb.ResolveModelUriResponse(version=version_pb(await self._version(tenant, model, version)))

    # -- artifacts ----------------------------------------------------------------------------
    async def CreateArtifactUpload(self, request: pb.CreateArtifactUploadRequest,
                                   context: grpc.aio.ServicerContext) -> pb.CreateArtifactUploadResponse:
        p = principal()
        tenant, model = parse_name("parent", request.parent, _MODEL, p)
        files = [DeclaredFile(f.path, f.digest, f.size_bytes) for f in request.files]
        part = request.part_size or 16 << 20
        expires = artifacts.check_expires("expires_s", request.expires_s)
        session, plan = await self._do(artifacts.create_upload, self._r.store, tenant, files, part,
                                       self._r.known_blob(tenant), expires, self._r.verified_put_max)
        targets = [pb.ArtifactUploadTarget(path=path, present=t.get("present", False), url=t.get("url", ""),
                                           part_urls=t.get("parts", {}), stream=t.get("stream", False),
                                           headers=t.get("headers", {}))
                   for path, t in plan.items()]
        return pb.CreateArtifactUploadResponse(upload=f"tenants/{tenant}/models/{model}/uploads/{session.id}",
                                               targets=targets, part_size=part)

    async def UploadArtifact(self, request_iterator: AsyncIterator[pb.UploadArtifactRequest],
                             context: grpc.aio.ServicerContext) -> pb.UploadArtifactResponse:
        p = principal()
        received, session, first = 0, None, ""
        async for chunk in request_iterator:
            if session is None:
                tenant, _, upload = parse_name("upload", chunk.upload, _UPLOAD, p)
                session = await self._do(artifacts.load_upload, self._r.store, tenant, upload)
                first = chunk.upload
            elif chunk.upload and chunk.upload != first:
                raise InvalidArgument.field("upload", "every chunk of a stream must name the same upload")
            if google_crc32c.value(chunk.data) != chunk.crc32c:
                raise InvalidArgument.field("crc32c", f"chunk of {chunk.path} at offset {chunk.offset} arrived damaged")
            await self._do(artifacts.write_streamed, self._r.store, session, chunk.path, chunk.data, chunk.offset)
            received += len(chunk.data)
        if session is None:
            raise InvalidArgument.field("upload", "the stream carried no chunks")
        return pb.UploadArtifactResponse(bytes_received=received)

    async def GetArtifactDownload(self, request: pb.GetArtifactDownloadRequest,
                                  context: grpc.aio.ServicerContext) -> pb.GetArtifactDownloadResponse:
        tenant, model, version = parse_name("name", request.name, _VERSION, principal())
        doc = await self._do(self._r.get_version, tenant, model, version)
        if doc["state"] == "deleted":
            raise NotFound(f"{request.name} is deleted")
        expires = artifacts.check_expires("expires_s", request.expires_s)
        plan = await self._do(artifacts.download_plan, self._r.store, tenant, doc["files"], expires)
        return pb.GetArtifactDownloadResponse(files=[pb.ArtifactLocation(file=pb.ArtifactFile(**f), url=url)
                                                     for f, url in plan])

    async def DownloadArtifact(self, request: pb.DownloadArtifactRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DownloadArtifactResponse]:
        tenant, model, version = parse_name("name", request.name, _VERSION, principal())
        doc = await self._do(self._r.get_version, tenant, model, version)
        f = next((f for f in doc["files"] if f["path"] == request.path), None)
        if f is None or doc["state"] == "deleted":
            raise NotFound(f"{request.name} has no file {quote(request.path)}")
        if not 0 <= request.offset <= f["size_bytes"]:
            raise InvalidArgument.field("offset", f"must be between 0 and {f['size_bytes']}")
        offset = request.offset
        chunks = self._r.store.iter_chunks(f["object_key"], chunk_size=_STREAM_CHUNK, offset=offset)
        while (data := await asyncio.to_thread(next, chunks, None)) is not None:
            yield pb.DownloadArtifactResponse(offset=offset, data=data, crc32c=google_crc32c.value(data))
            offset += len(data)

    # -- lineage, deployments, admin -----------------------------------------------------------
    async def GetLineage(self, request: pb.GetLineageRequest, context: grpc.aio.ServicerContext) -> pb.GetLineageResponse:
        tenant, model, version = parse_name("name", request.name, _VERSION, principal())
        nodes, edges = await self._do(self._r.lineage, tenant, model, version)
        return pb.GetLineageResponse(
            nodes=[pb.LineageNode(name=n["name"], kind=n["kind"], attributes=struct(n["attributes"])) for n in nodes],
            edges=[pb.LineageEdge(source=s, target=t) for s, t in edges])

    async def RecordDeployment(self, request: pb.RecordDeploymentRequest,
                               context: grpc.aio.ServicerContext) -> pb.RecordDeploymentResponse:
        p = principal()
        tenant, model, version = parse_name("name", request.name, _VERSION, p)
        parse_name("deployment", request.deployment, ("tenants", "deployments"), p)
        number = _number("name", version)
        if not carries_internal_key(context.invocation_metadata(), self._internal_key):
            # A recorded deployment blocks the version's deletion: a user's key alone may not.
            raise PermissionDenied("only the gateway records deployments (it does so when a deployment is created, "
                                   "rolled out or deleted)")
        doc = await self._do(self._r.record_deployment, tenant, model, number,
                             request.deployment, request.removed)
        return pb.RecordDeploymentResponse(version=version_pb(doc))

    async def RebuildIndex(self, request: pb.RebuildIndexRequest, context: grpc.aio.ServicerContext) -> pb.RebuildIndexResponse:
        _need(principal(), "admin", "rebuilding the registry index")
        counts = await self._do(rebuild.rebuild_all, self._r.store, self._r.index)
        return pb.RebuildIndexResponse(**counts)
