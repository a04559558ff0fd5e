"""The operator's pure reconcile functions: spec mapping, status from observed state, kstatus
conditions, and GPU pool replicas from pending demand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from pylon.types import DatasetVersion, Deployment, GpuPool, Job, Operation, Replica, TrainerStatus
from pylon_operator import datasets, deployments, pools, training
from pylon_operator.conditions import condition, summarize

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parents[2] / "operators" / "samples"


def job(state: str, **kw: Any) -> Job:
    base: dict[str, Any] = dict(name="tenants/acme/jobs/j1", state=state, message="", attempt=1, exit_code=0,
                                gpu_type="", output_uri="", metrics={}, last_log_lines=[], spec={}, created=T0,
                                started=None, ended=None)
    base.update(kw)
    return Job(**base)


def kinds(conds: list[dict[str, Any]]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in conds}


# -- conditions -------------------------------------------------------------------------------------
def test_kstatus_conditions_for_each_outcome():
    assert kinds(summarize([], "progressing", "Queued", "m", 1, T0)) == {"Ready": "False", "Reconciling": "True"}
    assert kinds(summarize([], "ready", "Succeeded", "m", 1, T0)) == {"Ready": "True"}
    assert kinds(summarize([], "stalled", "JobFailed", "m", 1, T0)) == {"Ready": "False", "Stalled": "True"}
    c = condition(summarize([], "stalled", "JobFailed", "boom", 3, T0), "Ready")
    assert c == {"type": "Ready", "status": "False", "reason": "JobFailed", "message": "boom",
                 "lastTransitionTime": "2025-01-02T03:04:05Z", "observedGeneration": 3}


def test_transition_time_moves_only_when_the_status_does():
    first = summarize([], "progressing", "Queued", "m", 1, T0)
    later = summarize(first, "progressing", "Running", "m2", 1, T0 + timedelta(minutes=5))
    assert condition(later, "Ready")["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert condition(later, "Ready")["reason"] == "Running"
    done = summarize(later, "ready", "Succeeded", "ok", 1, T0 + timedelta(minutes=9))
    assert condition(done, "Ready")["lastTransitionTime"] == "2025-01-02T03:13:05Z"


# -- TrainingJob ------------------------------------------------------------------------------------
def test_job_spec_maps_the_sample_onto_the_scheduler_job_spec():
    sample = yaml.safe_load((SAMPLES / "trainingjob-causal-lm.yaml").read_text())
    spec = training.job_spec("ml-team", "my-lm", sample["spec"])
    assert spec["placement"] == "PLACEMENT_STRATEGY_PACK"
    assert spec["stallTimeout"] == "1800s" and "stallTimeoutSeconds" not in spec
    assert spec["trainer"]["registerModel"] == {"model": "my-lm", "alias": "candidate"}
    assert spec["labels"] == {"team": "ml", "k8s.pylon.dev/namespace": "ml-team", "k8s.pylon.dev/name": "my-lm"}
    assert spec["displayName"] == "ml-team/my-lm"
    assert spec["resources"]["gpuTypes"] == ["A100", "V100"]
    from google.protobuf import json_format

    from pylon.scheduler.v1 import scheduler_pb2
    pb = json_format.ParseDict(spec, scheduler_pb2.JobSpec())  # every field is a JobSpec field
    assert pb.workers == 2 and pb.stall_timeout.seconds == 1800 and pb.trainer.config["steps"] == 2000


def test_request_id_is_the_uid_and_valid_for_the_api():
    import re
    rid = training.request_id("0b9f7a34-4c1e-4e57-9b43-3d9f0e2c1a77")
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", rid) and rid.endswith("0b9f7a34-4c1e-4e57-9b43-3d9f0e2c1a77")


def test_status_follows_the_job_through_its_states():
    status: dict[str, Any] = {}
    for state, phase, ready in (("pending", "Pending", "False"), ("running", "Running", "False"),
                                ("succeeded", "Succeeded", "True")):
        status = training.observed_status(status, job(state), 1, T0)
        assert status["phase"] == phase and condition(status["conditions"], "Ready")["status"] == ready
    assert kinds(status["conditions"]) == {"Ready": "True"}
    assert not training.needs_sync(status) and not training.needs_cancel(status)


def test_status_carries_metrics_and_progress():
    ts = TrainerStatus(40, 120, {"loss": 2.5, "bad": float("nan")}, T0, step=400, total_steps=1000)
    s = training.observed_status({}, job("running", step=400, metrics={"loss": 2.5, "note": "x"}, trainer_status=ts,
                                         gpu_type="V100", started=T0), 2, T0)
    assert s["metrics"] == {"loss": 2.5, "progressPercentage": 40, "estimatedRemainingSeconds": 120, "step": 400}
    assert s["gpuType"] == "V100" and s["startTime"] == "2025-01-02T03:04:05Z" and s["observedGeneration"] == 2


def test_failed_job_is_stalled_with_its_message():
    s = training.observed_status({}, job("failed", message="exit code 7", exit_code=7), 1, T0)
    assert s["phase"] == "Failed" and kinds(s["conditions"]) == {"Ready": "False", "Stalled": "True"}
    assert condition(s["conditions"], "Stalled")["message"] == "exit code 7"


def test_rejected_and_unreachable_statuses():
    r = training.rejected_status({}, "INVALID_ARGUMENT: spec.trainer.trainer: unknown", 1, T0)
    assert r["phase"] == "Failed" and condition(r["conditions"], "Ready")["reason"] == "InvalidSpec"
    assert not training.needs_submit(r)
    u = training.unreachable_status({}, "scheduler", "connection refused", 1, T0)
    assert u["phase"] == "Pending" and condition(u["conditions"], "Ready")["reason"] == "SchedulerUnavailable"
    assert "unreachable" in condition(u["conditions"], "Reconciling")["message"]
    assert training.needs_submit(u)


def test_cancel_on_delete_only_while_the_job_can_still_run():
    assert not training.needs_cancel({})
    assert training.needs_cancel({"jobName": "tenants/a/jobs/j", "phase": "Running"})
    assert not training.needs_cancel({"jobName": "tenants/a/jobs/j", "phase": "Succeeded"})


# -- ModelDeployment --------------------------------------------------------------------------------
def dep(state: str, replicas: int = 2, ready: int = 0, shared_with: list[str] | None = None,
        priority_class: str = "high") -> Deployment:
    return Deployment("tenants/acme/deployments/d", "models:/m@prod", "tenants/acme/models/m/versions/3", "torch",
                      replicas, state, "", [Replica(f"tenants/acme/jobs/r{i}", "", i < ready, 0) for i in range(replicas)],
                      priority_class=priority_class, shared_with=shared_with or [])


def test_deployment_plan():
    spec = {"modelUri": "models:/m@prod", "replicas": 2}
    assert deployments.plan(spec, None) == "create"
    assert deployments.plan(spec, dep("ready", 2)) == "none"
    assert deployments.plan({**spec, "replicas": 3}, dep("ready", 2)) == "scale"
    assert deployments.plan(spec, dep("deleting", 1)) == "wait"


def test_deployment_plan_shares_when_the_gateways_sharing_is_not_the_specs():
    spec = {"modelUri": "models:/m@prod", "replicas": 2, "sharedWith": ["globex", "*"]}
    assert deployments.plan(spec, dep("ready", 2)) == "share"
    assert deployments.plan(spec, dep("ready", 2, shared_with=["globex"])) == "share"
    assert deployments.plan(spec, dep("ready", 2, shared_with=["*", "globex"])) == "none"  # a set: order is no change
    assert deployments.plan({**spec, "replicas": 3}, dep("ready", 2)) == "scale"  # then share, planned again
    assert deployments.plan(spec, dep("deleting", 2)) == "wait"
    # A spec without sharedWith shares with no one: a sharing made outside the spec is undone.
    assert deployments.plan({"modelUri": "models:/m@prod", "replicas": 2}, dep("ready", 2, shared_with=["x"])) == "share"
    assert deployments.shared_with({"sharedWith": ["b", "a"]}) == ["b", "a"] and deployments.shared_with({}) == []


def test_deployment_status_shows_the_gateways_sharing_and_priority_and_waits_for_sharing():
    spec = {"modelUri": "models:/m@prod", "replicas": 2, "sharedWith": ["globex"], "priorityClass": "low"}
    s = deployments.observed_status({"observedGeneration": 1}, spec, dep("ready", 2, 2, priority_class="low"), 2, T0)
    assert (s["sharedWith"], s["priorityClass"]) == ([], "low")
    assert s["observedGeneration"] == 1 and condition(s["conditions"], "Reconciling")["reason"] == "Sharing"
    s = deployments.observed_status(s, spec, dep("ready", 2, 2, shared_with=["globex"], priority_class="low"), 2, T0)
    assert (s["sharedWith"], s["observedGeneration"], kinds(s["conditions"])) == (["globex"], 2, {"Ready": "True"})
    assert deployments.observed_status(s, spec, dep("ready", 2, 2, priority_class=""), 2, T0)["priorityClass"] == "high"


def test_deployment_status_ready_only_at_the_asked_replicas():
    spec = {"modelUri": "models:/m@prod", "replicas": 3}
    s = deployments.observed_status({"observedGeneration": 1}, spec, dep("ready", 2, ready=2), 2, T0)
    assert s["phase"] == "Ready" and s["observedGeneration"] == 1 and kinds(s["conditions"])["Reconciling"] == "True"
    s = deployments.observed_status(s, spec, dep("ready", 3, ready=3), 2, T0)
    assert s["observedGeneration"] == 2 and kinds(s["conditions"]) == {"Ready": "True"}
    assert s["metrics"]["readyReplicas"] == 3
    f = deployments.observed_status(s, spec, dep("failed", 3), 2, T0)
    assert f["phase"] == "Failed" and kinds(f["conditions"])["Stalled"] == "True"


def test_deployment_fields_parse_as_a_gateway_deployment():
    from google.protobuf import json_format

    from pylon.gateway.v1 import gateway_pb2
    sample = yaml.safe_load((SAMPLES / "modeldeployment.yaml").read_text())
    d = json_format.ParseDict(deployments.create_fields(sample["spec"]), gateway_pb2.Deployment())
    assert (d.model_uri, d.replicas, d.gpus_per_replica, list(d.gpu_types)) == ("models:/my-lm@prod", 2, 1.0, ["A100"])
    assert (d.priority_class, list(d.shared_with)) == ("high", ["search-team"])
    bare = deployments.create_fields({"modelUri": "models:/m@prod"})
    assert "sharedWith" not in bare and "priorityClass" not in bare  # the gateway's defaults: no one, high
    low = json_format.ParseDict(deployments.create_fields({"modelUri": "models:/m@prod", "priorityClass": "low",
                                                           "sharedWith": ["b", "*"]}), gateway_pb2.Deployment())
    assert (low.priority_class, list(low.shared_with)) == ("low", ["b", "*"])


# -- Dataset ----------------------------------------------------------------------------------------
def test_dataset_import_fields_and_statuses():
    from google.protobuf import json_format

    from pylon.ingest.v1 import ingest_pb2
    sample = yaml.safe_load((SAMPLES / "dataset.yaml").read_text())
    req = json_format.ParseDict(datasets.import_fields(sample["spec"]), ingest_pb2.ImportDatasetVersionRequest())
    assert req.format == ingest_pb2.DATA_FORMAT_JSONL and req.processing.recipe.min_chars == 20
    assert abs(req.processing.max_reject_rate - 0.05) < 1e-9 and len(req.source_uris) == 2
    running = Operation("tenants/a/operations/o", "", False, 0.5, {}, "", 0, "")
    s = datasets.importing_status({}, "tenants/a/datasets/d", running, 1, T0)
    assert s["phase"] == "Importing" and s["metrics"]["progress"] == 0.5
    failed = Operation("tenants/a/operations/o", "", True, 1.0, {}, "", 3, "bad record rate 0.4")
    s = datasets.importing_status(s, "tenants/a/datasets/d", failed, 1, T0)
    assert s["phase"] == "Failed" and condition(s["conditions"], "Ready")["message"] == "bad record rate 0.4"
    done = Operation("tenants/a/operations/o", "", True, 1.0, {}, "tenants/a/datasets/d/versions/2", 0, "")
    v = DatasetVersion("tenants/a/datasets/d/versions/2", 2, "sha256:ab", 10, 99, [], "ready", T0)
    r = datasets.ready_status({}, "tenants/a/datasets/d", done, v, 1, T0)
    assert r["phase"] == "Ready" and r["metrics"]["recordCount"] == 10 and kinds(r["conditions"]) == {"Ready": "True"}


# -- GPU pools --------------------------------------------------------------------------------------
def raycluster() -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / "raycluster-gpu-pools.yaml").read_text())


def pending(workers: int, gpus: float, types: list[str]) -> Job:
    return job("pending", spec={"workers": workers, "resources": {"gpus": gpus, "gpu_types": types}})


def test_worker_groups_read_from_both_resource_spellings():
    groups = pools.worker_groups(raycluster())
    assert [(g.name, g.gpu_type, g.gpus_per_replica, g.min_replicas, g.max_replicas, g.replicas) for g in groups] == [
        ("a100", "A100", 8.0, 0, 4, 0), ("l4", "L4", 1.0, 1, 8, 1)]


def test_scale_from_zero_follows_pending_demand_per_gpu_type():
    groups = pools.worker_groups(raycluster())
    demand = pools.demand_of([pending(2, 4, ["A100"]), pending(1, 8, ["A100"]), pending(3, 1, ["L4"]),
                              pending(1, 0, []), job("running", spec={"resources": {"gpus": 8}})])
    assert pools.desired_replicas(groups, demand, []) == {"a100": 2, "l4": 3}
    # No demand: back to each group's minimum.
    assert pools.desired_replicas(groups, [], []) == {"a100": 0, "l4": 1}


def test_busy_nodes_are_kept_and_bounds_hold():
    groups = pools.worker_groups(raycluster())
    busy = [GpuPool("A100", 2, 16, 12, 0, 0, 2, 0, 4)]
    assert pools.desired_replicas(groups, [], busy)["a100"] == 2  # 12 GPUs in use: 2 nodes of 8
    many = pools.demand_of([pending(8, 8, ["A100"]), pending(20, 1, ["L4"])])
    assert pools.desired_replicas(groups, many, busy) == {"a100": 4, "l4": 8}  # capped at max


def test_demand_goes_to_the_first_acceptable_type_that_fits():
    groups = pools.worker_groups(raycluster())
    demand = pools.demand_of([pending(1, 1, ["H100", "L4", "A100"]), pending(1, 4, ["L4", "A100"]), pending(1, 2, [])])
    # 1 GPU -> L4; 4 GPUs do not fit an L4 node -> A100; "any" of 2 GPUs -> the first group that holds it (A100).
    assert pools.desired_replicas(groups, demand, []) == {"a100": 1, "l4": 1}


def test_scale_down_waits_for_the_delay_and_scale_up_does_not():
    groups = pools.worker_groups(raycluster())
    grown = [pools.WorkerGroup(g.index, g.name, g.gpu_type, g.gpus_per_replica, g.min_replicas, g.max_replicas, 3)
             for g in groups]
    want = {"a100": 1, "l4": 5}
    out, memory = pools.damp_scale_down(grown, want, {}, now=100.0, delay_s=60)
    assert out == {"a100": 3, "l4": 5} and memory == {"a100": 100.0}
    out, memory = pools.damp_scale_down(grown, want, memory, now=161.0, delay_s=60)
    assert out == {"a100": 1, "l4": 5}
    # Demand back up: the memory is forgotten.
    out, memory = pools.damp_scale_down(grown, {"a100": 3, "l4": 5}, memory, now=170.0, delay_s=60)
    assert memory == {}


def test_replica_patch_guards_each_group_by_name():
    groups = pools.worker_groups(raycluster())
    ops = pools.replica_patch(groups, {"a100": 2, "l4": 1})
    assert ops == [{"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "a100"},
                   {"op": "add", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2}]
    assert pools.replica_patch(groups, {"a100": 0, "l4": 1}) == []
