"""Pure domain pieces: names, the job state machine, spec validation, admission, routing, roles."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from pylon_services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from pylon_services.common.names import Principal, parse_name, parse_parent
from pylon_services.gateway.domain.routing import ReplicaView, deployment_state, pick_replica
from pylon_services.runtime.auth import required_role, role_allows
from pylon_services.runtime.errors import to_status
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.placement import check_satisfiable
from pylon_services.scheduler.domain.scheduling import Node
from pylon_services.scheduler.domain.spec import Command, EngineReplica, JobSpec, Resources, Trainer, validate_spec
from pylon_services.workloads import REGISTRY, Workload, WorkloadKind, WorkloadRegistry

ACME = Principal("acme", "editor", "k1")
ADMIN = Principal("admin", "admin", "bootstrap")


def test_names_resolve_dash_and_hide_other_tenants():
    assert parse_name("name", "tenants/-/models/gpt/versions/3", ("tenants", "models", "versions"), ACME) == \
        ["acme", "gpt", "3"]
    with pytest.raises(NotFound):
        parse_name("name", "tenants/globex/models/gpt", ("tenants", "models"), ACME)
    assert parse_name("name", "tenants/globex/models/gpt", ("tenants", "models"), ADMIN) == ["globex", "gpt"]
    with pytest.raises(InvalidArgument, match="not of the form"):
        parse_name("name", "tenants/acme/gpt", ("tenants", "models"), ACME)
    with pytest.raises(InvalidArgument, match="lowercase"):
        parse_name("name", "tenants/acme/models/GPT", ("tenants", "models"), ACME)
    with pytest.raises(InvalidArgument, match="positive number"):
        parse_name("name", "tenants/acme/models/g/versions/x", ("tenants", "models", "versions"), ACME)
    assert parse_parent("parent", "", ACME) == "acme"


def test_job_state_machine():
    job = Job(id="j1", tenant="acme", spec=JobSpec(Command(("true",))))
    for state in (JobState.ADMITTED, JobState.STARTING, JobState.RUNNING, JobState.PREEMPTING, JobState.PENDING,
                  JobState.ADMITTED, JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED):
        job.transition(state, "")
    assert job.end_time and job.start_time
    with pytest.raises(FailedPrecondition, match="cannot become"):
        job.transition(JobState.RUNNING, "")
    assert Job.from_dict(job.to_dict()) == job


NODES = [Node("c", "cpu", 0, 0, 4, cpus_total=4), Node("v", "V100", 2, 2, 2, cpus_total=2),
         Node("k", "K80", 4, 4, 2, cpus_total=2)]


def test_validate_spec_names_every_bad_field():
    validate_spec(JobSpec(Command(("x",)), resources=Resources(gpus=4)))
    with pytest.raises(InvalidArgument) as e:
        validate_spec(JobSpec(Trainer("nope"), workers=0))
    assert {v.field for v in e.value.violations} == {"spec.workers", "spec.trainer.trainer"}
    with pytest.raises(InvalidArgument) as e:
        validate_spec(JobSpec(Trainer("causal-lm", config={"steps": 0, "bogus": 1}), workers=0))
    assert {v.field for v in e.value.violations} == {"spec.workers", "spec.trainer.config.bogus",
                                                     "spec.trainer.config.steps"}
    with pytest.raises(InvalidArgument) as e:
        validate_spec(JobSpec(Trainer("causal-lm", config={"steps": 0})))
    assert {v.field for v in e.value.violations} == {"spec.trainer.config.steps"}
    with pytest.raises(InvalidArgument, match="must be one of torch"):
        validate_spec(JobSpec(EngineReplica("tenants/a/deployments/d", "tenants/a/models/m/versions/1", engine="x")))


def test_a_trainer_name_that_is_not_registered_is_refused_with_the_names_that_are():
    with pytest.raises(InvalidArgument) as e:
        validate_spec(JobSpec(Trainer("tiny-gpt", config={"steps": 5})))
    assert [(v.field, v.description) for v in e.value.violations] == [
        ("spec.trainer.trainer", f"must be one of {', '.join(REGISTRY.names(WorkloadKind.TRAINER))}")]
    assert REGISTRY.names(WorkloadKind.TRAINER) == ["causal-lm"]


def test_a_workload_with_a_worker_limit_refuses_more_workers():
    registry = WorkloadRegistry()
    registry.register(Workload(WorkloadKind.TRAINER, "solo", "m:f", "one worker only", max_workers=1))
    validate_spec(JobSpec(Trainer("solo")), registry)
    with pytest.raises(InvalidArgument) as e:
        validate_spec(JobSpec(Trainer("solo"), workers=2), registry)
    assert [(v.field, v.description) for v in e.value.violations] == [
        ("spec.workers", "the solo trainer runs on at most 1 worker(s)")]


def test_satisfiable_names_unknown_types_and_nodes_too_small():
    assert check_satisfiable(JobSpec(Command(("x",)), resources=Resources(gpus=4)).demand(), NODES) is None
    h100 = JobSpec(Command(("x",)), resources=Resources(gpus=1, gpu_types=("H100",))).demand()
    assert "unknown GPU type" in (check_satisfiable(h100, NODES) or "")
    three = JobSpec(Command(("x",)), resources=Resources(gpus=3, gpu_types=("V100",))).demand()
    why = check_satisfiable(three, NODES) or ""
    assert "no node can ever hold one worker" in why and "the largest V100 node has 2 GPUs" in why


def test_stored_specs_round_trip_and_old_records_still_load():
    spec = JobSpec(Trainer("causal-lm", config={"steps": 5}, datasets=("tenants/a/datasets/d/versions/1",)),
                   workers=1, resources=Resources(gpus=1, gpu_types=("V100",)), gang=False, max_runtime_s=90,
                   checkpoint_every_steps=25, labels={"team": "nlp"})
    assert JobSpec.from_dict(spec.to_dict()) == spec
    # What MessageToDict stored before specs were typed: int64 as strings, absent fields, a Duration string.
    old = JobSpec.from_dict({"workers": 2, "command": {"argv": ["true"]}, "checkpoint_every_steps": "25",
                             "max_runtime": "1.5s", "resources": {"gpus": 1.0}})
    assert (old.workers, old.checkpoint_every_steps, old.max_runtime_s, old.gang, old.kind) == (2, 25, 1.5, True, "command")


def test_routing_prefers_least_loaded_fresh_replica():
    now = 1000.0
    reps = [ReplicaView("a", "h:1", now - 1, 0), ReplicaView("b", "h:2", now - 1, 0), ReplicaView("c", "h:3", now - 60, 0)]
    assert pick_replica(reps, {"h:1": 2, "h:2": 1}, now).job_id == "b"
    assert pick_replica([reps[2]], {}, now) is None
    assert deployment_state(2, 3, [], 3) == ("ready", "2/3 replica(s) ready")
    assert deployment_state(0, 1, [], 1)[0] == "pending"
    assert deployment_state(0, 2, ["job a failed: boom"], 2)[0] == "pending"  # one replica may still start
    assert deployment_state(0, 2, ["job a failed: boom", "job b failed: bang"], 2) == (
        "failed", "every replica job ended without serving; job a failed: boom")
    assert deployment_state(1, 2, ["job a failed: boom"], 2)[0] == "ready"
    assert deployment_state(0, 1, [], 0, deleting=True)[0] == "deleting"
    assert deployment_state(0, 0, [], 0)[0] == "idle"  # scaled to zero
    assert deployment_state(1, 0, [], 1)[0] == "idle"  # a replica still draining after the scale-down


def test_roles():
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/pylon.common.v1.PlatformService/GetPlatform") is None
    assert required_role("/pylon.admin.v1.AdminService/CreateApiKey") == "admin"
    assert required_role("/pylon.admin.v1.AdminService/WhoAmI") == "viewer"
    assert required_role("/pylon.registry.v1.RegistryService/GetModel") == "viewer"
    assert required_role("/pylon.registry.v1.RegistryService/SetAlias") == "editor"
    assert role_allows("admin", "editor") and not role_allows("viewer", "editor")


def _details(status: grpc.Status) -> status_pb2.Status:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def test_error_mapping_carries_google_rpc_details():
    st = to_status(InvalidArgument.field("spec.workers", "must be positive"), "req-1")
    assert st.code == grpc.StatusCode.INVALID_ARGUMENT
    details = _details(st).details
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in details if d.Is(bad.DESCRIPTOR))
    assert bad.field_violations[0].field == "spec.workers"
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in details if d.Is(info.DESCRIPTOR)) and info.metadata["request_id"] == "req-1"
    st = to_status(ResourceExhausted("slow down", retry_after_s=2.5), "r")
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in _details(st).details if d.Is(retry.DESCRIPTOR))
    assert retry.retry_delay.ToNanoseconds() == 2_500_000_000
