"""The SDK's resource collections: one verb set everywhere (see docs/architecture.md)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import google_crc32c
from google.protobuf import json_format

from pylon.admin.v1 import admin_pb2
from pylon.errors import PylonError, UnavailableError
from pylon.gateway.v1 import gateway_pb2
from pylon.ingest.v1 import ingest_pb2
from pylon.registry.v1 import registry_pb2
from pylon.scheduler.v1 import scheduler_pb2
from pylon.types import Alias, Dataset, DatasetVersion, Deployment, Job, Model, ModelVersion

if TYPE_CHECKING:
    from pylon.client import Client

CHUNK_BYTES = 1 << 20
Progress = Callable[[int, int], None]  # (bytes done, bytes total)
_FORMATS = {"text": ingest_pb2.DATA_FORMAT_TEXT, "txt": ingest_pb2.DATA_FORMAT_TEXT,
            "jsonl": ingest_pb2.DATA_FORMAT_JSONL, "csv": ingest_pb2.DATA_FORMAT_CSV,
            "parquet": ingest_pb2.DATA_FORMAT_PARQUET}


def _name(kind: str, name: str) -> str:
    """Accept a short id ("wiki") or a full resource name."""
    return name if name.startswith("tenants/") else f"tenants/-/{kind}/{name}"


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


class _Resource:
    def __init__(self, client: Client) -> None:
        self._c = client


class Datasets(_Resource):
    def upload(self, path: str, name: str, *, format: str | None = None, description: str = "",
               request_id: str | None = None, progress: Progress | None = None) -> DatasetVersion:
        """Stream a file to ingest (CRC32C per chunk, SHA-256 checked at commit) as a new version."""
        fmt = format or os.path.splitext(path)[1].lstrip(".").lower() or "text"
        if fmt not in _FORMATS:
            raise PylonError(f"unknown format {fmt!r}; pass format= one of {sorted(_FORMATS)}")
        size = os.path.getsize(path)
        header = ingest_pb2.UploadHeader(dataset=_name("datasets", name), path=os.path.basename(path),
                                         format=_FORMATS[fmt], digest=file_digest(path), size_bytes=size,
                                         description=description, request_id=request_id or os.urandom(8).hex())

        def messages() -> Iterator[ingest_pb2.UploadDatasetVersionRequest]:
            yield ingest_pb2.UploadDatasetVersionRequest(header=header)
            done = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield ingest_pb2.UploadDatasetVersionRequest(
                        chunk=ingest_pb2.UploadChunk(data=chunk, crc32c=google_crc32c.value(chunk)))
                    done += len(chunk)
                    if progress:
                        progress(done, size)

        resp = self._c.call(self._c.ingest.UploadDatasetVersion, messages(), timeout=3600)
        return DatasetVersion.from_proto(resp.version, resp.deduplicated)

    def list(self, page_size: int = 100) -> list[Dataset]:
        resp = self._c.call(self._c.ingest.ListDatasets, ingest_pb2.ListDatasetsRequest(page_size=page_size))
        return [Dataset.from_proto(d) for d in resp.datasets]

    def get(self, name: str, version: str | int | None = None) -> Dataset | DatasetVersion:
        """The dataset, or one of its versions (a number or "latest")."""
        if version is None:
            return Dataset.from_proto(self._c.call(self._c.ingest.GetDataset,
                                                   ingest_pb2.GetDatasetRequest(name=_name("datasets", name))).dataset)
        req = ingest_pb2.GetDatasetVersionRequest(name=f"{_name('datasets', name)}/versions/{version}")
        return DatasetVersion.from_proto(self._c.call(self._c.ingest.GetDatasetVersion, req).version)


class Jobs(_Resource):
    def submit(self, spec: dict[str, Any], *, request_id: str | None = None) -> Job:
        """Queue a job. ``spec`` has the JobSpec fields (the YAML of ``pylon jobs submit``)."""
        try:
            pb_spec = json_format.ParseDict(spec, scheduler_pb2.JobSpec())
        except json_format.ParseError as e:
            raise PylonError(f"invalid job spec: {e}") from None
        req = scheduler_pb2.SubmitJobRequest(spec=pb_spec, request_id=request_id or os.urandom(8).hex())
        return Job.from_proto(self._c.call(self._c.scheduler.SubmitJob, req).job)

    def get(self, name: str) -> Job:
        return Job.from_proto(self._c.call(self._c.scheduler.GetJob,
                                           scheduler_pb2.GetJobRequest(name=_name("jobs", name))).job)

    def list(self, page_size: int = 50, states: list[str] | None = None) -> list[Job]:
        req = scheduler_pb2.ListJobsRequest(page_size=page_size, states=[
            scheduler_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in states or []])
        return [Job.from_proto(j) for j in self._c.call(self._c.scheduler.ListJobs, req).jobs]

    def cancel(self, name: str) -> Job:
        return Job.from_proto(self._c.call(self._c.scheduler.CancelJob,
                                           scheduler_pb2.CancelJobRequest(name=_name("jobs", name))).job)

    def logs(self, name: str, *, follow: bool = False, offset: int = 0) -> Iterator[str]:
        req = scheduler_pb2.StreamLogsRequest(name=_name("jobs", name), follow=follow, offset=offset)
        for resp in self._c.stream(self._c.scheduler.StreamLogs, req):
            for line in resp.lines:
                yield line.text

    def watch(self, name: str, timeout: float | None = None) -> Iterator[Job]:
        req = scheduler_pb2.WatchJobRequest(name=_name("jobs", name))
        for resp in self._c.stream(self._c.scheduler.WatchJob, req, timeout=timeout):
            yield Job.from_proto(resp.job)

    def wait(self, name: str, timeout: float | None = None) -> Job:
        """Block until the job ends; returns it in its final state."""
        last = None
        for job in self.watch(name, timeout=timeout):
            last = job
        if last is None or not last.done:
            raise PylonError(f"watch of {name} ended before the job finished")
        return last

    def metrics(self, name: str) -> list[dict[str, Any]]:
        resp = self._c.call(self._c.scheduler.ListJobMetrics, scheduler_pb2.ListJobMetricsRequest(name=_name("jobs", name)))
        return [{"key": p.key, "step": p.step, "value": p.value} for p in resp.points]


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


class Deployments(_Resource):
    def deploy(self, name: str, model_uri: str, *, replicas: int = 1, engine: str = "torch", gpus: float = 0,
               gpu_types: list[str] | None = None, wait: bool = True, timeout: float = 600,
               request_id: str | None = None) -> Deployment:
        """Deploy ``models:/name@alias`` (or a version); with ``wait``, return once a replica serves."""
        dep = gateway_pb2.Deployment(model_uri=model_uri, replicas=replicas, engine=engine, gpus_per_replica=gpus,
                                     gpu_types=gpu_types or [])
        req = gateway_pb2.CreateDeploymentRequest(deployment_id=name, deployment=dep,
                                                  request_id=request_id or os.urandom(8).hex())
        out = Deployment.from_proto(self._c.call(self._c.gateway.CreateDeployment, req).deployment)
        return self.wait_ready(name, timeout) if wait else out

    def wait_ready(self, name: str, timeout: float = 600) -> Deployment:
        deadline = time.monotonic() + timeout
        while True:
            dep = self.get(name)
            if dep.state == "ready":
                return dep
            if dep.state == "failed":
                raise PylonError(f"deployment {name} failed: {dep.message}")
            if time.monotonic() > deadline:
                raise UnavailableError(f"deployment {name} not ready after {timeout:.0f}s: {dep.message}")
            time.sleep(0.5)

    def get(self, name: str) -> Deployment:
        req = gateway_pb2.GetDeploymentRequest(name=_name("deployments", name))
        return Deployment.from_proto(self._c.call(self._c.gateway.GetDeployment, req).deployment)

    def list(self, page_size: int = 100) -> list[Deployment]:
        resp = self._c.call(self._c.gateway.ListDeployments, gateway_pb2.ListDeploymentsRequest(page_size=page_size))
        return [Deployment.from_proto(d) for d in resp.deployments]

    def delete(self, name: str) -> None:
        self._c.call(self._c.gateway.DeleteDeployment, gateway_pb2.DeleteDeploymentRequest(name=_name("deployments", name)))


class Admin(_Resource):
    def create_key(self, tenant: str, role: str = "editor", description: str = "") -> tuple[str, str]:
        """Returns (key name, token); the token is shown only here."""
        req = admin_pb2.CreateApiKeyRequest(tenant=tenant, role=admin_pb2.Role.Value(f"ROLE_{role.upper()}"),
                                            description=description)
        resp = self._c.call(self._c.admin_stub.CreateApiKey, req)
        return resp.api_key.name, resp.token

    def whoami(self) -> dict[str, str]:
        resp = self._c.call(self._c.admin_stub.WhoAmI, admin_pb2.WhoAmIRequest())
        return {"tenant": resp.tenant, "role": admin_pb2.Role.Name(resp.role)[5:].lower(), "api_key": resp.api_key}
