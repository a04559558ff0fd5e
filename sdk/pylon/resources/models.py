"""Models: register, list, get, versions, aliases, lineage."""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import json_format

from pylon.registry.v1 import registry_pb2
from pylon.resources._base import _name, _Resource
from pylon.types import Alias, Model, ModelVersion


class Models(_Resource):
    def register(self, name: str, source_uri: str, *, format: str = "pylon_gpt", metrics: dict[str, float] | None = None,
                 tags: dict[str, str] | None = None, description: str = "", job: str = "",
                 datasets: list[str] | None = None, dataset_digests: list[str] | None = None,
                 request_id: str | None = None) -> ModelVersion:
        """Register the files under an object-store prefix (e.g. a job's output) as a new version."""
        req = registry_pb2.CreateModelVersionRequest(
            parent=_name("models", name), source_uri=source_uri,
            format=registry_pb2.ModelFormat.Value(f"MODEL_FORMAT_{format.upper()}"),
            metrics=metrics or {}, tags=tags or {}, description=description, request_id=request_id or os.urandom(8).hex(),
            lineage=registry_pb2.Lineage(job=job, datasets=datasets or [], dataset_digests=dataset_digests or []))
        return ModelVersion.from_proto(self._c.call(self._c.registry.CreateModelVersion, req).version)

    def list(self, page_size: int = 100) -> list[Model]:
        resp = self._c.call(self._c.registry.ListModels, registry_pb2.ListModelsRequest(page_size=page_size))
        return [Model.from_proto(m) for m in resp.models]

    def get(self, name: str, version: str | int | None = None) -> Model | ModelVersion:
        if version is None:
            return Model.from_proto(self._c.call(self._c.registry.GetModel,
                                                 registry_pb2.GetModelRequest(name=_name("models", name))).model)
        req = registry_pb2.GetModelVersionRequest(name=f"{_name('models', name)}/versions/{version}")
        return ModelVersion.from_proto(self._c.call(self._c.registry.GetModelVersion, req).version)

    def versions(self, name: str, page_size: int = 50) -> list[ModelVersion]:
        req = registry_pb2.ListModelVersionsRequest(parent=_name("models", name), page_size=page_size)
        return [ModelVersion.from_proto(v) for v in self._c.call(self._c.registry.ListModelVersions, req).versions]

    def alias(self, name: str, alias: str, version: int | None = None, *, etag: str = "") -> Alias:
        """Get an alias, or (with ``version``) move it; ``etag`` makes the move compare-and-swap."""
        full = f"{_name('models', name)}/aliases/{alias}"
        if version is None:
            return Alias.from_proto(self._c.call(self._c.registry.GetAlias, registry_pb2.GetAliasRequest(name=full)).alias)
        req = registry_pb2.SetAliasRequest(name=full, version=version, etag=etag)
        return Alias.from_proto(self._c.call(self._c.registry.SetAlias, req).alias)

    def resolve(self, uri: str) -> ModelVersion:
        return ModelVersion.from_proto(self._c.call(self._c.registry.ResolveModelUri,
                                                    registry_pb2.ResolveModelUriRequest(uri=uri)).version)

    def lineage(self, name: str, version: str | int) -> dict[str, Any]:
        req = registry_pb2.GetLineageRequest(name=f"{_name('models', name)}/versions/{version}")
        return json_format.MessageToDict(self._c.call(self._c.registry.GetLineage, req), preserving_proto_field_name=True)


