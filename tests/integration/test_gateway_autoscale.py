"""Autoscaling, scale to zero and canary rollouts through the real gateway, scheduler, registry
and Ray, with real engine replicas; and the two failure cases of deployments: a create the
scheduler refuses leaves nothing behind, and only the gateway may record a deployment."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pylon
from pylon.registry.v1 import registry_pb2
from pylon.types import Autoscaling, Rollout
from tests.support.hf_models import build_model_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _model(directory: Path, seed: int = 0) -> str:
    return str(build_model_dir(directory, "llama", seed=seed))


def _ready(dep: Any) -> int:
    return sum(r.ready for r in dep.replica_status if not r.canary)


def test_a_create_the_scheduler_refuses_leaves_no_deployment(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    mv = acme.models.register("as-nogpu", _model(tmp_path / "m"))
    uri = f"models:/as-nogpu/versions/{mv.version}"
    for _ in range(2):  # the second try is refused the same way, not with ALREADY_EXISTS
        with pytest.raises(pylon.FailedPreconditionError):
            acme.deployments.deploy("as-nogpu", uri, gpus=1, gpu_types=["H100"], replicas=2)
        with pytest.raises(pylon.NotFoundError):
            acme.deployments.get("as-nogpu")
    assert "tenants/acme/deployments/as-nogpu" not in acme.models.get("as-nogpu", mv.version).deployments
    assert not [j for j in acme.jobs.list() if j.spec.get("engine", {}).get("deployment", "").endswith("/as-nogpu")]


def test_only_the_gateway_records_a_deployment_on_a_version(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    mv = acme.models.register("as-record", _model(tmp_path / "m"))
    with pytest.raises(pylon.PermissionDeniedError, match="only the gateway"):
        acme.call(acme.registry.RecordDeployment, registry_pb2.RecordDeploymentRequest(
            name=mv.name, deployment="tenants/acme/deployments/squatter"))
    version = acme.models.get("as-record", mv.version)
    assert "tenants/acme/deployments/squatter" not in version.deployments


def _load(client: Any, name: str, stop: threading.Event, threads: int) -> list[threading.Thread]:
    """Requests back to back from ``threads`` callers until ``stop``."""
    def run() -> None:
        while not stop.is_set():
            try:
                client.generate(name, "hello", max_tokens=400, ignore_eos=True, temperature=0, timeout=120)
            except pylon.PylonError:
                time.sleep(0.2)

    out = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in out:
        t.start()
    return out


def test_scales_up_on_load_down_to_min_then_to_zero_and_a_held_request_wakes_it(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    mv = acme.models.register("as-load", _model(tmp_path / "m"))
    policy = Autoscaling(min_replicas=1, max_replicas=2, target_queue=2, target_kv_usage=0, scale_down_delay_s=4,
                         scale_to_zero_after_s=5)
    dep = acme.deployments.deploy("as-load", f"models:/as-load/versions/{mv.version}", autoscaling=policy,
                                  timeout=240)
    try:
        assert (dep.state, dep.replicas, dep.autoscaling) == ("ready", 1, policy)
        stop = threading.Event()
        step = time.monotonic()
        threads = _load(acme, "as-load", stop, 6)
        try:
            up = wait_for(lambda: (d := acme.deployments.get("as-load")).replicas == 2 and _ready(d) == 2 and d,
                          240, "a second replica serving under load")
        finally:
            stop.set()
            for t in threads:
                t.join(130)
        print(f"load step -> second replica serving: {time.monotonic() - step:.1f}s")
        assert [(e.from_replicas, e.to_replicas, e.by) for e in up.scale_events] == [(1, 2, "autoscaler")]
        assert "per replica" in up.scale_events[0].reason
        down = wait_for(lambda: (d := acme.deployments.get("as-load")).replicas == 1 and d, 90, "back to min")
        assert down.scale_events[-1].by == "autoscaler" and len(down.replica_status) == 1
        # min 0: after scale_to_zero_after_s without a request, no replica runs at all
        acme.deployments.scale("as-load", autoscaling=Autoscaling(0, 2, 2, 0, 0, 4, 3))
        idle = wait_for(lambda: (d := acme.deployments.get("as-load")).state == "idle" and d, 90, "scaled to zero")
        assert idle.replicas == 0 and not idle.replica_status and idle.scale_events[-1].to_replicas == 0
        gone = [r.job for r in down.replica_status]
        assert wait_for(lambda: all(acme.jobs.get(j).state == "cancelled" for j in gone), 60, "replica job cancelled")
        # a request at zero is held while a replica starts, then served
        t0 = time.monotonic()
        out = acme.generate("as-load", "hello", max_tokens=4, temperature=0, timeout=300)
        waited = time.monotonic() - t0
        assert out.completion_tokens == 4
        woke = acme.deployments.get("as-load")
        assert woke.replicas == 1 and woke.scale_events[-1].by == "request"
        assert woke.replica_status[0].job not in gone and out.replica == woke.replica_status[0].job.rsplit("/", 1)[1]
        assert 0 < woke.last_cold_start_s <= waited
        print(f"cold start (request held at zero replicas): {woke.last_cold_start_s:.1f}s, request {waited:.1f}s")
    finally:
        acme.deployments.delete("as-load")


def test_a_canary_of_a_moved_alias_is_promoted_when_healthy_and_rolled_back_when_it_fails(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    v1 = acme.models.register("as-roll", _model(tmp_path / "v1"))
    acme.models.set_alias("as-roll", "prod", v1.version)
    rollout = Rollout(canary_percent=50, min_requests=4, max_error_rate=0.2, bake_s=1, start_timeout_s=200)
    dep = acme.deployments.deploy("as-roll", "models:/as-roll@prod", rollout=rollout, timeout=240)
    try:
        assert dep.rollout == rollout and dep.model_version == v1.name
        v2 = acme.models.register("as-roll", _model(tmp_path / "v2", seed=1))
        acme.models.set_alias("as-roll", "prod", v2.version)
        trial = wait_for(lambda: (d := acme.deployments.get("as-roll")).canary and d.canary.ready and d, 240,
                         "the canary replica serving")
        assert trial.canary.model_version == v2.name
        assert [(r.model_version, r.canary) for r in trial.replica_status] == [(v1.name, False), (v2.name, True)]
        assert trial.name in acme.models.get("as-roll", v2.version).deployments

        def promoted() -> Any:
            served = {acme.generate("as-roll", "hi", max_tokens=2, temperature=0).replica for _ in range(4)}
            d = acme.deployments.get("as-roll")
            return d.model_version == v2.name and not d.canary and (d, served)

        done, _ = wait_for(promoted, 120, "the canary promoted")
        assert [e.outcome for e in done.rollout_history] == ["started", "promoted"]
        assert done.rollout_history[1].to_version == v2.name and "healthy" in done.rollout_history[1].reason
        assert [r.model_version for r in done.replica_status] == [v2.name]
        assert wait_for(lambda: done.name not in acme.models.get("as-roll", v1.version).deployments, 30,
                        "v1 no longer recorded as deployed")
        # a version whose replica cannot start is rolled back; v2 keeps serving
        bad = tmp_path / "garbage"
        bad.mkdir()
        (bad / "model.safetensors").write_bytes(b"not a safetensors file")
        (bad / "config.json").write_text("{}")
        v3 = acme.models.register("as-roll", str(bad), format="hf_transformers")
        acme.models.set_alias("as-roll", "prod", v3.version)
        back = wait_for(lambda: (d := acme.deployments.get("as-roll")).rollout_history[-1].outcome == "rolled_back"
                        and d, 240, "the failing canary rolled back")
        assert back.model_version == v2.name and not back.canary
        assert back.rollout_history[-1].to_version == v3.name and "did not start" in back.rollout_history[-1].reason
        assert acme.generate("as-roll", "hi", max_tokens=2, temperature=0).completion_tokens == 2
        time.sleep(3)  # the rolled-back version is not tried again while the alias stays on it
        assert acme.deployments.get("as-roll").rollout_history[-1].outcome == "rolled_back"
    finally:
        acme.deployments.delete("as-roll")
