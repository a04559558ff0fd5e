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
from pylon_services.scheduler.domain.job import Job, JobState, PoolCapacity, validate_spec

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
    job = Job(id="j1", tenant="acme", spec={})
    for state in (JobState.ADMITTED, JobState.STARTING, JobState.RUNNING, JobState.PREEMPTING, JobState.PENDING,
                  JobState.ADMITTED, JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED):
        job.transition(state, "")
    assert job.end_time and job.start_time
    with pytest.raises(FailedPrecondition, match="cannot become"):
        job.transition(JobState.RUNNING, "")
    assert Job.from_dict(job.to_dict()) == job


POOLS = [PoolCapacity("cpu", 0, 4, 1), PoolCapacity("V100", 2, 2, 1), PoolCapacity("K80", 4, 2, 1)]


def test_validate_spec():
    validate_spec({"workers": 1, "resources": {"gpus": 4}, "command": {"argv": ["x"]}}, POOLS)
    with pytest.raises(InvalidArgument) as e:
        validate_spec({"workers": 0, "trainer": {"trainer": "nope"}}, POOLS)
    assert {v.field for v in e.value.violations} == {"spec.workers", "spec.trainer.trainer"}
    with pytest.raises(FailedPrecondition, match="unknown GPU type"):
        validate_spec({"resources": {"gpus": 1, "gpu_types": ["H100"]}, "command": {"argv": ["x"]}}, POOLS)
    with pytest.raises(FailedPrecondition, match="largest acceptable node has 2 GPUs"):
        validate_spec({"resources": {"gpus": 3, "gpu_types": ["V100"]}, "command": {"argv": ["x"]}}, POOLS)


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
