"""A replica the real scheduler preempts drains: the stream in flight finishes instead of being
cut off mid-token, the replica leaves the routing table and exits as preempted, and the scheduler
requeues it (engines/replica.py, through the scheduler, Ray and Redis of the test platform)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
import redis

from pylon.engine.v1 import engine_pb2 as pb
from pylon.engine.v1 import engine_pb2_grpc
from pylon_services.engines.registration import replicas_key
from pylon_services.runtime.settings import Settings
from tests.support.hf_models import build_model_dir
from tests.support.platform import ADMIN_KEY
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_a_preempted_replica_finishes_its_streams_then_is_requeued(tenant_clients: Any, redis_server: Any,
                                                                   tmp_path: Any) -> None:
    acme = tenant_clients["acme"]
    # A long context, so one stream outlasts the preemption's round trip (a few seconds on CPU).
    mv = acme.models.register("preempt-engine", str(build_model_dir(tmp_path / "m", "llama",
                                                                     max_position_embeddings=4096)))
    deployment = "tenants/acme/deployments/preempt-probe"
    low = acme.jobs.submit({"priority_class": "low", "preemptible": True,
                            "resources": {"gpus": 1, "gpu_types": ["V100"], "cpus": 1},
                            "engine": {"deployment": deployment, "model_version": mv.name, "engine": "torch"}})
    r = redis.Redis.from_url(redis_server.url)
    key = replicas_key("acme", "preempt-probe")
    try:
        address = wait_for(lambda: _address(r, key) or _ended(acme, low.name), 240, "the replica to register")
        internal = Settings(admin_key=ADMIN_KEY).internal_key
        with grpc.insecure_channel(address) as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            stream = stub.Generate(pb.GenerateRequest(prompt_token_ids=[5, 6, 7], sampling=pb.SamplingParams(
                max_tokens=3000, temperature=0.0, ignore_eos=True)),
                metadata=(("authorization", f"Bearer {internal}"),), timeout=120)
            first = next(stream)
            high = acme.jobs.submit({"priority_class": "high", "resources": {"gpus": 2, "gpu_types": ["V100"]},
                                     "command": {"argv": ["true"]}})
            rest = list(stream)  # the replica drains: the stream ends normally, every token delivered
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert len(first.token_ids) + sum(len(x.token_ids) for x in rest) == 3000
        assert acme.jobs.wait(high.name, timeout=180).state == "succeeded"
        requeued = wait_for(lambda: (j := acme.jobs.get(low.name)).preemptions == 1 and j, 120, "the requeue")
        assert requeued.retries == 0, requeued.message
        logs = "\n".join(acme.jobs.logs(low.name))
        assert "preemption requested" in logs and "engine draining: 1 streams" in logs  # it was mid-stream
    finally:
        acme.jobs.cancel(low.name)


def _ended(acme: Any, job: str) -> None:
    j = acme.jobs.get(job)
    if j.state in ("failed", "cancelled", "succeeded"):
        raise AssertionError(f"the replica job ended {j.state}: {j.message}\n" + "\n".join(acme.jobs.logs(job)))


def _address(r: redis.Redis, key: str) -> str | None:
    """The one registered replica's address (registrations are keyed by job id)."""
    found = r.hvals(key)
    return str(json.loads(found[0])["address"]) if found else None
