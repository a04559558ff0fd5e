"""RegistryService transport: validate and convert, then call the domain (in a worker thread,
since the object store is synchronous)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from pylon.registry.v1 import registry_pb2 as pb
from pylon.registry.v1 import registry_pb2_grpc
from pylon_services.common.errors import InvalidArgument
from pylon_services.common.names import parse_name, parse_parent
from pylon_services.registry.domain.service import FORMATS, Registry, VersionSpec
from pylon_services.runtime.context import principal
from pylon_services.runtime.protoconv import from_struct, page_size, struct, ts

_STATES = {"ready": pb.MODEL_VERSION_STATE_READY, "archived": pb.MODEL_VERSION_STATE_ARCHIVED,
           "deleted": pb.MODEL_VERSION_STATE_DELETED}


def model_pb(d: dict[str, Any]) -> pb.Model:
    return pb.Model(name=d["name"], description=d.get("description", ""), tags=d.get("tags", {}),
                    aliases=d.get("aliases", {}), latest_version=d.get("latest_version", 0),
                    create_time=ts(d.get("create_time")))


def version_pb(d: dict[str, Any]) -> pb.ModelVersion:
    lin = d.get("lineage", {})
    return pb.ModelVersion(
        name=d["name"], version=d["version"], state=_STATES[d["state"]], format=FORMATS.index(d["format"]),
        files=[pb.ArtifactFile(**f) for f in d["files"]], config=struct(d.get("config")),
        metrics=d.get("metrics", {}), tags=d.get("tags", {}), description=d.get("description", ""),
        lineage=pb.Lineage(**lin), aliases=d.get("aliases", []), deployments=d.get("deployments", []),
        creator=d.get("creator", ""), create_time=ts(d.get("create_time")), digest=d.get("digest", ""))


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._r = registry

    async def CreateModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = principal()
        tenant = parse_parent("parent", request.parent, p)
        doc = await asyncio.to_thread(self._r.create_model, tenant, request.model_id, request.description,
                                      dict(request.tags), p.key_id)
        doc = await asyncio.to_thread(self._r.get_model, tenant, request.model_id)
        return pb.CreateModelResponse(model=model_pb(doc))

    async def GetModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, model = parse_name("name", request.name, ("tenants", "models"), principal())
        return pb.GetModelResponse(model=model_pb(await asyncio.to_thread(self._r.get_model, tenant, model)))

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant = parse_parent("parent", request.parent, principal())
        models, token = await asyncio.to_thread(self._r.list_models, tenant, page_size(request.page_size),
                                                request.page_token or None)
        return pb.ListModelsResponse(models=[model_pb(m) for m in models], next_page_token=token or "")

    async def CreateModelVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = principal()
        tenant, model = parse_name("parent", request.parent, ("tenants", "models"), p)
        source = request.source_uri
        if not source.startswith(f"tenants/{tenant}/"):
            raise InvalidArgument.field("source_uri", f"must be an object prefix inside tenants/{tenant}/")
        lin = request.lineage
        spec = VersionSpec(
            source_prefix=source, files={f.path: f.digest for f in request.files},
            format=FORMATS[request.format] if request.format < len(FORMATS) else "x",
            config=from_struct(request.config), metrics=dict(request.metrics), tags=dict(request.tags),
            description=request.description, request_id=request.request_id,
            lineage={"datasets": list(lin.datasets), "dataset_digests": list(lin.dataset_digests),
                     "job": lin.job, "checkpoint": lin.checkpoint or source, "base_model": lin.base_model})
        doc = await asyncio.to_thread(self._r.create_version, tenant, model, spec, p.key_id)
        return pb.CreateModelVersionResponse(version=version_pb(doc))

    async def GetModelVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, model, version = parse_name("name", request.name, ("tenants", "models", "versions"), principal())
        doc = await asyncio.to_thread(self._r.get_version, tenant, model, version)
        return pb.GetModelVersionResponse(version=version_pb(doc))

    async def ListModelVersions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, model = parse_name("parent", request.parent, ("tenants", "models"), principal())
        docs, token = await asyncio.to_thread(self._r.list_versions, tenant, model, page_size(request.page_size),
                                              request.page_token or None)
        return pb.ListModelVersionsResponse(versions=[version_pb(d) for d in docs], next_page_token=token or "")

    async def SetAlias(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = principal()
        tenant, model, alias = parse_name("name", request.name, ("tenants", "models", "aliases"), p)
        if request.version <= 0:
            raise InvalidArgument.field("version", "must be a positive version number")
        doc = await asyncio.to_thread(self._r.set_alias, tenant, model, alias, request.version, request.etag, p.key_id)
        return pb.SetAliasResponse(alias=pb.Alias(name=doc["name"], version=doc["version"], etag=doc["etag"],
                                                  update_time=ts(doc["update_time"]), updated_by=doc["updated_by"]))

    async def GetAlias(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, model, alias = parse_name("name", request.name, ("tenants", "models", "aliases"), principal())
        doc = await asyncio.to_thread(self._r.get_alias, tenant, model, alias)
        return pb.GetAliasResponse(alias=pb.Alias(name=doc["name"], version=doc["version"], etag=doc["etag"],
                                                  update_time=ts(doc["update_time"]), updated_by=doc["updated_by"]))

    async def ResolveModelUri(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        doc = await asyncio.to_thread(self._r.resolve_uri, principal().tenant, request.uri)
        return pb.ResolveModelUriResponse(version=version_pb(doc))

    async def GetLineage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tenant, model, version = parse_name("name", request.name, ("tenants", "models", "versions"), principal())
        nodes, edges = await asyncio.to_thread(self._r.lineage, tenant, model, version)
        return pb.GetLineageResponse(
            nodes=[pb.LineageNode(name=n["name"], kind=n["kind"], attributes=struct(n["attributes"])) for n in nodes],
            edges=[pb.LineageEdge(source=s, target=t) for s, t in edges])

    async def RecordDeployment(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = principal()
        tenant, model, version = parse_name("name", request.name, ("tenants", "models", "versions"), p)
        if not version.isdigit():
            raise InvalidArgument.field("name", "must name an exact version number")
        parse_name("deployment", request.deployment, ("tenants", "deployments"), p)
        doc = await asyncio.to_thread(self._r.record_deployment, tenant, model, int(version),
                                      request.deployment, request.removed)
        return pb.RecordDeploymentResponse(version=version_pb(doc))
