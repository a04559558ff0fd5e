"""The limits of a job spec and of the gateway's requests, as pure checks (no server)."""

from __future__ import annotations

import math

import grpc
import pytest

from pylon_services.common.errors import Internal, InvalidArgument, Unavailable
from pylon_services.common.names import Principal
from pylon_services.engines.contract import SamplingOptions
from pylon_services.gateway.api.inputs import passed_on
from pylon_services.gateway.domain.requests import config_violations, sampling_violations
from pylon_services.scheduler.api.inputs import in_tenant
from pylon_services.scheduler.domain.spec import Command, EngineReplica, JobSpec, Resources, Trainer, validate_spec

ACME = Principal("acme", "editor", "k1")
ADMIN = Principal("admin", "admin", "bootstrap")


def _fields(spec: JobSpec) -> set[str]:
    with pytest.raises(InvalidArgument) as e:
        validate_spec(spec)
    return {v.field for v in e.value.violations}


def test_numbers_are_bounded():
    assert _fields(JobSpec(Command(("x",)), max_runtime_s=31 * 86400.0)) == {"spec.max_runtime"}
    assert _fields(JobSpec(Command(("x",)), max_retries=101)) == {"spec.max_retries"}
    assert _fields(JobSpec(Command(("x",)), total_steps=10**13, checkpoint_every_steps=-1)) == {
        "spec.total_steps", "spec.checkpoint_every_steps"}
    assert _fields(JobSpec(Command(("x",)), resources=Resources(gpus=math.nan))) == {"spec.resources"}
    assert _fields(JobSpec(Command(("x",)), resources=Resources(memory_bytes=2**50))) == {"spec.resources.memory_bytes"}


def test_strings_maps_and_lists_are_bounded_and_not_echoed():
    spec = JobSpec(Command(("x",) * 1025, env={"A": "\0"}, pip_requirements=("p",) * 129),
                   display_name="d" * 257, labels={"bad key": "v"}, queue="q/x")
    with pytest.raises(InvalidArgument) as e:
        validate_spec(spec)
    assert {v.field for v in e.value.violations} == {
        "spec.command.argv", "spec.command.env[A]", "spec.command.pip_requirements", "spec.display_name",
        "spec.labels[0]", "spec.queue"}
    assert "d" * 257 not in e.value.message


def test_configs_hold_finite_numbers_of_bounded_depth_and_size():
    deep: dict = {"x": 1}
    for _ in range(20):
        deep = {"x": deep}
    assert _fields(JobSpec(Trainer("causal-lm", config={"lr": math.inf}))) == {"spec.trainer.config.lr"}
    assert _fields(JobSpec(Trainer("causal-lm", config=deep))) == {"spec.trainer.config" + ".x" * 16}
    assert _fields(JobSpec(Trainer("causal-lm", config={"k": "v" * 70_000}))) == {"spec.trainer.config"}
    assert config_violations("c", {"x": [math.nan]})[0].field == "c.x[0]"


def test_references_stay_in_the_jobs_tenant():
    ok = in_tenant(JobSpec(Trainer("causal-lm", datasets=("tenants/-/datasets/d/versions/3",))), "acme", ACME)
    assert ok.workload.datasets == ("tenants/acme/datasets/d/versions/3",)
    for datasets in (("tenants/globex/datasets/d/versions/1",), ("tenants/-/datasets/d/versions/\u00b2",),
                     ("tenants/-/datasets/d/versions/" + "9" * 5000,)):
        with pytest.raises(InvalidArgument):
            in_tenant(JobSpec(Trainer("causal-lm", datasets=datasets)), "acme", ACME)
    # An admin submitting for acme names acme: "-" would be the admin's own tenant.
    with pytest.raises(InvalidArgument):
        in_tenant(JobSpec(Trainer("causal-lm", datasets=("tenants/-/datasets/d/versions/1",))), "acme", ADMIN)
    in_tenant(JobSpec(Trainer("causal-lm", datasets=("tenants/acme/datasets/d/versions/1",))), "acme", ADMIN)
    key = "tenants/acme/workdirs/sha256-" + "a" * 64 + ".tar.gz"
    in_tenant(JobSpec(Command(("x",), working_dir_key=key)), "acme", ACME)
    for bad in ("tenants/acme/workdirs/../x", "tenants/globex/workdirs/sha256-" + "a" * 64 + ".tar.gz", key + "x"):
        with pytest.raises(InvalidArgument):
            in_tenant(JobSpec(Command(("x",), working_dir_key=bad)), "acme", ACME)
    with pytest.raises(InvalidArgument):
        in_tenant(JobSpec(EngineReplica("tenants/acme/deployments/d", "tenants/globex/models/m/versions/1")),
                  "acme", ACME)


def test_sampling_is_checked_like_the_engines_do():
    assert sampling_violations("hi", SamplingOptions()) == []
    bad = sampling_violations("", SamplingOptions(max_tokens=-1, temperature=math.nan, top_p=1.5, top_k=-1, stop=("",),
                                                  seed=-1, n=0, min_p=-0.5, presence_penalty=3.0))
    assert {v.field for v in bad} == {"prompt", "sampling.max_tokens", "sampling.temperature", "sampling.top_p",
                                      "sampling.top_k", "sampling.stop", "sampling.seed", "sampling.n",
                                      "sampling.min_p", "sampling.presence_penalty"}


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_errors_of_called_services_pass_on_without_internal_addresses():
    leak = "failed to connect to all addresses; last error: ipv4:10.1.2.3:50051: Connection refused"
    err = passed_on("scheduler", _rpc_error(grpc.StatusCode.UNAVAILABLE, leak))
    assert isinstance(err, Unavailable) and "10.1.2.3" not in err.message
    err = passed_on("registry", _rpc_error(grpc.StatusCode.INTERNAL, leak))
    assert isinstance(err, Internal) and "10.1.2.3" not in err.message
    mine = _rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "no pool fits")
    assert passed_on("scheduler", mine) is mine  # the caller's own mistake passes on as it is


@pytest.mark.parametrize("seconds, ok", [(0.0, True), (60.0, True), (7 * 86400.0, True), (7 * 86400.0 + 1, False),
                                         (-1.0, False), (math.inf, False)])
def test_stall_timeout_is_off_or_up_to_seven_days(seconds, ok):
    spec = JobSpec(Command(("x",)), stall_timeout_s=seconds)
    if ok:
        validate_spec(spec)
    else:
        assert _fields(spec) == {"spec.stall_timeout"}


def test_stall_timeout_and_pinned_tokens_survive_the_ledger_and_the_proto():
    from pylon_services.scheduler.api.convert import spec_from_pb, spec_to_pb
    from pylon_services.scheduler.domain.spec import TokenData

    tokens = TokenData("tenants/acme/datasets/d/versions/2", "tenants/acme/datasets/d/versions/2/tokenizations/bpe",
                       "bpe", "tenants/acme/tokenizers/bpe.json", "sha256:ab", "p/index.json", "p/", 1000, 1, 600,
                       "uint16")
    spec = JobSpec(Trainer("causal-lm", datasets=(tokens.dataset_version,), token_data=(tokens,),
                           register_model="m", register_alias="prod"), stall_timeout_s=90.0)
    assert JobSpec.from_dict(spec.to_dict()) == spec
    pb = spec_to_pb(spec)
    assert pb.stall_timeout.seconds == 90 and pb.trainer.token_data[0].total_tokens == 1000
    back = spec_from_pb(pb)  # token_data is output only: a request cannot set it
    assert back.stall_timeout_s == 90.0 and back.workload.token_data == () and back.workload.register_alias == "prod"
