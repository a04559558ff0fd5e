"""The leader's ``ModelRegistrar``: registers a succeeded trainer job's output through the
registry's API, as the platform (the bootstrap admin key only platform processes hold; workers,
and so the jobs' code, never get it).

The version gets the job's lineage: its pinned dataset versions, the job, its checkpoints'
prefix, the base model it fine-tuned, and its final metrics. The request id is the job's, so a
retry after a lost answer (or a second leader) gets the same version back, and an alias named in
the spec is then moved to it.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from pylon.registry.v1 import registry_pb2 as pb
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.spec import Trainer
from pylon_services.workloads import REGISTRY, WorkloadKind

CALL_TIMEOUT_S = 600.0  # a server-side copy of a large model's files


class RegistryRegistrar:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self._settings = settings
        self._peers = PlatformClients(settings, redis)  # finds the registry as every service does

    async def register(self, job: Job) -> str:
        w = job.spec.workload
        assert isinstance(w, Trainer) and w.register_model
        workload = REGISTRY.get(WorkloadKind.TRAINER, w.trainer)
        fmt = workload.output_format if workload else ""
        metadata = (("authorization", f"Bearer {self._settings.admin_key}"),)
        model = f"tenants/{job.tenant}/models/{w.register_model}"
        digests = [t.dataset_digest for t in w.token_data]
        lineage = pb.Lineage(job=job.name, datasets=list(w.datasets), base_model=w.base_model_version,
                             dataset_digests=digests if digests and all(digests) else [],
                             checkpoint=f"{job.name}/checkpoint/")
        req = pb.CreateModelVersionRequest(
            parent=model, source_uri=job.output_uri, format=pb.ModelFormat.Value(fmt),
            metrics={k: v for k, v in job.latest_metrics.items() if math.isfinite(v)}, lineage=lineage,
            tags={"trainer": w.trainer}, description=f"trained by {job.name}", request_id=f"{job.id}-register")
        stub = await self._peers.registry()
        version = (await stub.CreateModelVersion(req, metadata=metadata, timeout=CALL_TIMEOUT_S)).version
        if w.register_alias:
            await stub.SetAlias(pb.SetAliasRequest(name=f"{model}/aliases/{w.register_alias}", version=version.version),
                                metadata=metadata, timeout=60)
        return str(version.name)

    async def close(self) -> None:
        await self._peers.close()
