"""Replacing replica jobs that ended, through the real gateway, scheduler, registry and Ray with
real engine replicas: a replica job cancelled through the scheduler is replaced by the gateway's
controller while the other replica serves on; a deployment whose replicas fail on every attempt
backs off, then stops replacing them and reads FAILED with the last failure, instead of
resubmitting forever."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

import pylon
from pylon.gateway.v1 import gateway_pb2
from pylon_services.localstack.procs import free_port
from pylon_services.runtime.settings import Settings
from tests.support.hf_models import build_model_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _model(directory: Path) -> str:
    return str(build_model_dir(directory, "llama"))


def _stable(dep: Any) -> list[Any]:
    return [r for r in dep.replica_status if not r.canary]


def _replica_jobs(client: Any, deployment: str) -> list[Any]:
    return [j for j in client.jobs.list()
            if j.spec.get("engine", {}).get("deployment", "") == f"tenants/acme/deployments/{deployment}"]


def test_a_replica_job_cancelled_through_the_scheduler_is_replaced_and_the_other_serves_on(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    mv = acme.models.register("rp-cancel", _model(tmp_path / "m"))
    dep = acme.deployments.deploy("rp-cancel", f"models:/rp-cancel/versions/{mv.version}", replicas=2, timeout=240)
    try:
        dep = wait_for(lambda: (d := acme.deployments.get("rp-cancel")) and all(r.ready for r in _stable(d)) and d,
                       240, "both replicas to serve")
        gone, kept = (r.job for r in _stable(dep))
        assert acme.jobs.cancel(gone).state in ("cancelled", "running")  # the worker stops within its grace
        # The other replica serves while the controller replaces the cancelled one.
        assert acme.generate("rp-cancel", "hello", max_tokens=4, temperature=0, timeout=60).replica
        dep = wait_for(lambda: (d := acme.deployments.get("rp-cancel")) and len(_stable(d)) == 2
                       and gone not in {r.job for r in _stable(d)} and all(r.ready for r in _stable(d)) and d,
                       240, "the cancelled replica to be replaced by one that serves")
        assert dep.state == "ready" and dep.replicas == 2
        new = next(r.job for r in _stable(dep) if r.job != kept)
        assert kept in {r.job for r in _stable(dep)} and new != gone
        assert acme.jobs.get(gone).state == "cancelled" and acme.jobs.get(new).state == "running"
        event = dep.scale_events[-1]
        assert (event.by, event.from_replicas, event.to_replicas) == ("controller", 2, 2)
        assert event.reason.startswith(f"replaced replica job {gone} cancelled"), event.reason
        assert acme.generate("rp-cancel", "hello again", max_tokens=4, temperature=0, timeout=60).replica
        # Exactly one replacement: no second job was submitted for the same slot.
        assert sorted(j.name for j in _replica_jobs(acme, "rp-cancel")) == sorted([gone, kept, new])
    finally:
        acme.deployments.delete("rp-cancel")


@pytest.fixture
def fast_gateway(platform: Any, tenant_clients: dict[str, Any]) -> Iterator[pylon.Client]:
    """A second gateway whose controller replaces with small backoffs, no scheduler retries and at
    most 3 failures; the platform's own controller stops meanwhile (so this one takes the lease,
    as after a gateway failover) and starts again afterwards."""
    own = platform.servers["gateway"].parts.extra["controller"]
    platform.lt.run(own.stop())
    settings = Settings(**{**platform.base, "port": free_port(), "gateway_controller_interval_s": 0.5,
                           "gateway_replica_max_retries": 0, "gateway_replace_backoff_s": 1.0,
                           "gateway_replace_backoff_max_s": 2.0, "gateway_replace_max_failures": 3})
    server = platform.lt.run(platform._start("gateway", settings))
    client = pylon.Client(f"127.0.0.1:{settings.port}", tenant_clients["acme"].token)
    try:
        yield client
    finally:
        client.close()
        platform.lt.run(server.stop(grace=1.0))
        platform.lt.run(own.start())


def test_a_crash_looping_deployment_backs_off_then_turns_failed_with_the_last_failure(fast_gateway, tmp_path):
    acme = fast_gateway
    mv = acme.models.register("rp-crash", _model(tmp_path / "m"))
    # A device the workers lack: the engine fails every attempt with an error that is no "cannot
    # serve this model" (the scheduler would retry it if allowed), so the controller replaces it.
    config = struct_pb2.Struct()
    config.update({"device": "cuda:9"})
    acme.call(acme.gateway.CreateDeployment, gateway_pb2.CreateDeploymentRequest(
        deployment_id="rp-crash", request_id="rp-crash-1", deployment=gateway_pb2.Deployment(
            model_uri=f"models:/rp-crash/versions/{mv.version}", engine_config=config)))
    try:
        with pytest.raises(pylon.FailedPreconditionError) as e:
            acme.deployments.wait_ready("rp-crash", timeout=240)
        assert "stopped replacing after 3 consecutive replica failure(s)" in e.value.message, e.value.message
        dep = acme.deployments.get("rp-crash")
        assert dep.state == "failed" and "CUDA" in dep.message, dep.message
        jobs = sorted(_replica_jobs(acme, "rp-crash"), key=lambda j: j.created)
        assert [j.state for j in jobs] == ["failed"] * 3, [(j.name, j.state, j.message) for j in jobs]
        assert dep.replica_status[0].job == jobs[-1].name
        events = [e for e in dep.scale_events if e.by == "controller"]
        assert [e.reason.split(" ")[0] for e in events] == ["replaced", "replaced", "stopped"], events
        assert events[0].reason.startswith(f"replaced replica job {jobs[0].name} failed")
        assert "(failure 1 of at most 3 in a row; backoff 1s)" in events[0].reason
        assert "(failure 2 of at most 3 in a row; backoff 2s)" in events[1].reason
        # Each replacement waited its backoff after the failure it replaces.
        for before, after, backoff in ((jobs[0], jobs[1], 1.0), (jobs[1], jobs[2], 2.0)):
            assert (after.created - before.ended).total_seconds() >= backoff - 0.05, (before, after)
        # Stopped for good: later ticks submit nothing more.
        time.sleep(3)
        assert len(_replica_jobs(acme, "rp-crash")) == 3
    finally:
        acme.deployments.delete("rp-crash")
