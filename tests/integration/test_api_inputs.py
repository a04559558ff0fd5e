"""Holes at the API boundary of SchedulerService and GatewayService, through the real platform:
each input below once ended in INTERNAL, was stored and broke a later call, crossed tenants, or
was echoed whole. Every one is now INVALID_ARGUMENT naming the field, with a short message."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import duration_pb2, struct_pb2

import pylon
from pylon.engine.v1 import engine_pb2
from pylon.errors import from_rpc_error
from pylon.gateway.v1 import gateway_pb2
from pylon.scheduler.v1 import scheduler_pb2 as spb

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-marker-"  # part of oversized inputs; must never come back in a reply


def _command(**spec: Any) -> spb.JobSpec:
    return spb.JobSpec(command=spb.Command(argv=["true"]), **spec)


def _nan_struct(key: str, value: float) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.fields[key].number_value = value
    return s


BAD_SPECS: list[tuple[str, spb.JobSpec, str]] = [
    ("unicode digit in a dataset version", spb.JobSpec(trainer=spb.BuiltinTrainer(
        trainer="causal-lm", datasets=["tenants/-/datasets/d/versions/\u00b2"])), "spec.trainer.datasets[0]"),
    ("5,000-digit dataset version", spb.JobSpec(trainer=spb.BuiltinTrainer(
        trainer="causal-lm", datasets=["tenants/-/datasets/d/versions/" + "9" * 5000])), "spec.trainer.datasets[0]"),
    ("another tenant's dataset", spb.JobSpec(trainer=spb.BuiltinTrainer(
        trainer="causal-lm", datasets=["tenants/globex/datasets/d/versions/1"])), "spec.trainer.datasets[0]"),
    ("working_dir_key with ..", spb.JobSpec(command=spb.Command(
        argv=["true"], working_dir_key="tenants/acme/workdirs/../../globex/workdirs/sha256-" + "0" * 64 + ".tar.gz")),
     "spec.command.working_dir_key"),
    ("working_dir_key of another prefix", spb.JobSpec(command=spb.Command(
        argv=["true"], working_dir_key="tenants/globex/workdirs/sha256-" + "0" * 64 + ".tar.gz")),
     "spec.command.working_dir_key"),
    ("max_runtime past Duration's range", _command(max_runtime=duration_pb2.Duration(seconds=400_000_000_000)),
     "spec.max_runtime"),
    ("max_runtime over 30 days", _command(max_runtime=duration_pb2.Duration(seconds=31 * 86400)), "spec.max_runtime"),
    ("NaN in trainer.config", spb.JobSpec(trainer=spb.BuiltinTrainer(trainer="causal-lm",
                                                                       config=_nan_struct("lr", math.nan))),
     "spec.trainer.config.lr"),
    ("infinity in engine_config", spb.JobSpec(engine=spb.EngineReplica(
        deployment="tenants/-/deployments/d", model_version="tenants/-/models/m/versions/1",
        engine_config=_nan_struct("x", math.inf))), "spec.engine.engine_config.x"),
    ("another tenant's model in an engine job", spb.JobSpec(engine=spb.EngineReplica(
        deployment="tenants/acme/deployments/d", model_version="tenants/globex/models/m/versions/1")),
     "spec.engine.model_version"),
    ("a huge display name", _command(display_name=SECRET * 20_000), "spec.display_name"),
    ("a queue with a slash", _command(queue="a/b"), "spec.queue"),
    ("a huge queue name", _command(queue=SECRET * 1000), "spec.queue"),
    ("too many labels", _command(labels={f"k{i}": "v" for i in range(65)}), "spec.labels"),
    ("a huge label value", _command(labels={"k": SECRET * 100}), "spec.labels[k]"),
    ("an env name with '='", spb.JobSpec(command=spb.Command(argv=["true"], env={"A=B": "x"})), "spec.command.env"),
    ("NUL in argv", spb.JobSpec(command=spb.Command(argv=["a\0b"])), "spec.command.argv[0]"),
    ("a huge argv", spb.JobSpec(command=spb.Command(argv=[SECRET * 10_000])), "spec.command.argv"),
    ("too many gpu types", _command(resources=spb.WorkerResources(gpu_types=[f"T{i}" for i in range(17)])),
     "spec.resources.gpu_types"),
    ("max_retries over 100", _command(max_retries=2_000_000_000), "spec.max_retries"),
    ("total_steps over 10^12", _command(total_steps=2**62), "spec.total_steps"),
    ("memory over 16 TiB", _command(resources=spb.WorkerResources(memory_bytes=2**62)), "spec.resources.memory_bytes"),
]


def _fails(client: pylon.Client, method: Any, request: Any, code: type[pylon.PylonError],
           stream: bool = False) -> pylon.PylonError:
    """The error ``method(request)`` answers; its message never holds an oversized input."""
    with pytest.raises(code) as e:
        if stream:
            list(client.stream(method, request, timeout=30))
        else:
            client.call(method, request)
    assert SECRET not in e.value.message and len(e.value.message) < 2000, e.value.message[:300]
    return e.value


@pytest.mark.parametrize("what, spec, field", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_a_bad_spec_is_invalid_argument_naming_the_field(tenant_clients, what, spec, field):
    acme = tenant_clients["acme"]
    err = _fails(acme, acme.scheduler.SubmitJob, spb.SubmitJobRequest(parent="tenants/-", spec=spec),
                 pylon.InvalidArgumentError)
    assert field in {v.field for v in err.violations}, (what, err.violations)


@pytest.mark.parametrize("request_", [
    spb.SubmitJobRequest(parent="tenants/" + SECRET * 100, spec=_command()),
    spb.SubmitJobRequest(parent="tenants/-", spec=_command(), request_id=SECRET * 100),
], ids=["parent", "request_id"])
def test_oversized_names_are_refused_without_echo(tenant_clients, request_):
    acme = tenant_clients["acme"]
    _fails(acme, acme.scheduler.SubmitJob, request_, pylon.InvalidArgumentError)


def test_job_names_tokens_offsets_and_keys_are_checked(tenant_clients):
    acme = tenant_clients["acme"]
    s = acme.scheduler
    for name in ("tenants/acme/jobs/" + SECRET * 100, "tenants/acme/jobs/j\u00b2", "tenants/acme/jobs/../x"):
        _fails(acme, s.GetJob, spb.GetJobRequest(name=name), pylon.InvalidArgumentError)
    for token in ("\u00b2", "9" * 5000, SECRET):
        _fails(acme, s.ListJobs, spb.ListJobsRequest(page_token=token), pylon.InvalidArgumentError)
    _fails(acme, s.ListJobs, spb.ListJobsRequest(states=[99]), pylon.InvalidArgumentError)
    job = acme.jobs.submit({"command": {"argv": ["true"]}})
    with pytest.raises(pylon.InvalidArgumentError) as e:
        list(acme.stream(s.StreamLogs, spb.StreamLogsRequest(name=job.name, offset=2**63 - 1), timeout=30))
    assert [v.field for v in e.value.violations] == ["offset"]
    _fails(acme, s.ListJobMetrics, spb.ListJobMetricsRequest(name=job.name, keys=[SECRET * 100]),
           pylon.InvalidArgumentError)


def test_queue_quotas_must_be_finite(admin_client):
    for quota in ({"nominal_gpus": {"V100": math.nan}}, {"weight": math.inf}, {"nominal_gpus": {"V\u00b2/x": 1}}):
        with pytest.raises(pylon.InvalidArgumentError):
            admin_client.call(admin_client.scheduler.CreateQueue, spb.CreateQueueRequest(
                parent="tenants/acme", queue_id="finite", queue=spb.Queue(**quota)))


def test_a_metric_that_is_not_a_number_does_not_break_list_metrics(tenant_clients, redis_client):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"command": {"argv": ["true"]}})
    tenant, job_id = job.name.split("/")[1], job.name.split("/")[3]
    # What a worker's json.dumps writes for a user's report of {"loss": NaN}.
    redis_client.rpush(f"pylon:jobmetrics:{tenant}:{job_id}", '{"key": "loss", "step": 1, "value": NaN, "t": 1.0}',
                       '{"key": "loss", "step": 2, "value": 0.5, "t": 2.0}')
    points = acme.jobs.metrics(job.name)
    assert [(p.step, p.value) for p in points if p.key == "loss"] == [(2, 0.5)]


def test_stored_jobs_too_big_for_one_page_are_paged(admin_client, redis_client):
    """Jobs stored before the limits (5 MiB display names each) no longer break ListJobs: a page
    ends at its byte budget and the token goes on."""
    tenant = "bigjobs"
    now = time.time()
    for i in range(5):
        job_id = f"jbig-{i}"
        doc = {"id": job_id, "tenant": tenant, "state": "succeeded", "message": "done", "create_time": now + i,
               "spec": {"display_name": "x" * (5 << 20), "command": {"argv": ["true"]}}}
        redis_client.set(f"pylon:job:{tenant}:{job_id}", orjson.dumps(doc))
        redis_client.zadd(f"pylon:jobs:{tenant}", {job_id: now + i})
    seen, token = [], ""
    for _ in range(10):
        resp = admin_client.call(admin_client.scheduler.ListJobs,
                                 spb.ListJobsRequest(parent=f"tenants/{tenant}", page_size=100, page_token=token))
        seen += [j.name for j in resp.jobs]
        token = resp.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"tenants/{tenant}/jobs/jbig-{i}" for i in range(5)]


def test_pending_limit_per_tenant(platform, admin_client, redis_client, monkeypatch):
    """A second scheduler API with PYLON_SCHED_MAX_PENDING_PER_TENANT=2 on the same Redis: a
    tenant's third pending job is RESOURCE_EXHAUSTED with a retry delay; a retry of a queued
    request id still answers; cancelling one makes room."""
    from pylon_services.localstack.procs import free_port
    from tests.support.platform import PylonServer, Settings, _builder

    monkeypatch.setenv("PYLON_SCHED_MAX_PENDING_PER_TENANT", "2")
    port = free_port()

    async def start() -> Any:
        import redis.asyncio as aioredis

        settings = Settings(**{**platform.base, "scheduler_address": f"127.0.0.1:{port}"}, port=port)
        redis = aioredis.from_url(settings.redis_url)
        server = PylonServer(settings, redis, await _builder("scheduler")(settings, redis))
        await server.start()
        return server

    registered = redis_client.hget("pylon:endpoints", "scheduler")
    server = platform.lt.run(start())
    try:
        _, token = admin_client.admin.create_key("capped", "editor")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        from pylon.scheduler.v1 import scheduler_pb2_grpc

        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        md = [("authorization", f"Bearer {token}")]
        spec = _command(resources=spb.WorkerResources(gpus=1, gpu_types=["A100"]))  # pool at zero nodes: waits
        jobs = [stub.SubmitJob(spb.SubmitJobRequest(spec=spec, request_id=f"cap-{i}"), metadata=md, timeout=30).job
                for i in range(2)]
        with pytest.raises(grpc.RpcError) as e:
            stub.SubmitJob(spb.SubmitJobRequest(spec=spec, request_id="cap-2"), metadata=md, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        err = from_rpc_error(e.value)
        assert err.retry_after_s and err.retry_after_s > 0 and "pending" in err.message
        again = stub.SubmitJob(spb.SubmitJobRequest(spec=spec, request_id="cap-0"), metadata=md, timeout=30).job
        assert again.name == jobs[0].name
        stub.CancelJob(spb.CancelJobRequest(name=jobs[0].name), metadata=md, timeout=30)
        jobs.append(stub.SubmitJob(spb.SubmitJobRequest(spec=spec, request_id="cap-3"), metadata=md, timeout=30).job)
        for job in jobs[1:]:
            stub.CancelJob(spb.CancelJobRequest(name=job.name), metadata=md, timeout=30)
        channel.close()
    finally:
        platform.lt.run(server.stop(grace=1.0))
        redis_client.hset("pylon:endpoints", "scheduler", registered)  # discovery names the session's server again


def _garbage_model(tmp_path: Path) -> str:
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"not a model")
    (d / "config.json").write_text("{}")
    return str(d)


def test_models_of_another_tenant_are_refused(admin_client, tmp_path):
    """An admin's URI resolves in the admin's tenant: a job or deployment it creates for acme
    must not pin (and so read) that tenant's model files."""
    admin_client.models.register("cross-model", _garbage_model(tmp_path), format="hf_transformers")
    err = _fails(admin_client, admin_client.scheduler.SubmitJob, spb.SubmitJobRequest(
        parent="tenants/acme", spec=spb.JobSpec(trainer=spb.BuiltinTrainer(
            trainer="causal-lm", base_model="models:/cross-model/latest"))), pylon.InvalidArgumentError)
    assert [v.field for v in err.violations] == ["spec.trainer.base_model"]
    err = _fails(admin_client, admin_client.gateway.CreateDeployment, gateway_pb2.CreateDeploymentRequest(
        parent="tenants/acme", deployment_id="cross", deployment=gateway_pb2.Deployment(
            model_uri="models:/cross-model/latest")), pylon.InvalidArgumentError)
    assert [v.field for v in err.violations] == ["deployment.model_uri"]


BAD_DEPLOYMENTS: list[tuple[str, gateway_pb2.CreateDeploymentRequest, str]] = [
    ("NaN in engine_config", gateway_pb2.CreateDeploymentRequest(deployment_id="d", deployment=gateway_pb2.Deployment(
        model_uri="models:/m/latest", engine_config=_nan_struct("x", math.nan))), "deployment.engine_config.x"),
    ("unicode digit in model_uri", gateway_pb2.CreateDeploymentRequest(deployment_id="d", deployment=gateway_pb2.Deployment(
        model_uri="models:/m/versions/\u00b2")), "deployment.model_uri"),
    ("5,000-digit version in model_uri", gateway_pb2.CreateDeploymentRequest(
        deployment_id="d", deployment=gateway_pb2.Deployment(model_uri="models:/m/versions/" + "7" * 5000)),
     "deployment.model_uri"),
    ("negative gpus", gateway_pb2.CreateDeploymentRequest(deployment_id="d", deployment=gateway_pb2.Deployment(
        model_uri="models:/m/latest", gpus_per_replica=-1)), "deployment.gpus_per_replica"),
    ("huge deployment id", gateway_pb2.CreateDeploymentRequest(deployment_id=SECRET * 100, deployment=gateway_pb2.Deployment(
        model_uri="models:/m/latest")), "deployment_id"),
    ("huge engine name", gateway_pb2.CreateDeploymentRequest(deployment_id="d", deployment=gateway_pb2.Deployment(
        model_uri="models:/m/latest", engine=SECRET * 100)), "deployment.engine"),
]


@pytest.mark.parametrize("what, request_, field", BAD_DEPLOYMENTS, ids=[b[0] for b in BAD_DEPLOYMENTS])
def test_a_bad_deployment_is_invalid_argument_naming_the_field(tenant_clients, what, request_, field):
    acme = tenant_clients["acme"]
    err = _fails(acme, acme.gateway.CreateDeployment, request_, pylon.InvalidArgumentError)
    assert field in {v.field for v in err.violations}, (what, err.violations)


@pytest.mark.parametrize("sampling, prompt, field", [
    (engine_pb2.SamplingParams(temperature=math.nan), "hi", "sampling.temperature"),
    (engine_pb2.SamplingParams(top_p=math.inf), "hi", "sampling.top_p"),
    (engine_pb2.SamplingParams(max_tokens=-5), "hi", "sampling.max_tokens"),
    (engine_pb2.SamplingParams(stop=["x"] * 17), "hi", "sampling.stop"),
    (engine_pb2.SamplingParams(seed=-1), "hi", "sampling.seed"),
    (engine_pb2.SamplingParams(), SECRET * 10_000, "prompt"),
], ids=["nan-temperature", "inf-top-p", "negative-max-tokens", "17-stops", "negative-seed", "huge-prompt"])
def test_generate_checks_sampling_before_looking_up_the_deployment(tenant_clients, sampling, prompt, field):
    acme = tenant_clients["acme"]
    err = _fails(acme, acme.gateway.Generate, gateway_pb2.GenerateRequest(
        deployment="tenants/-/deployments/nope", prompt=prompt, sampling=sampling), pylon.InvalidArgumentError,
        stream=True)
    assert field in {v.field for v in err.violations}


def test_deployment_names_tokens_and_etags_are_checked(tenant_clients):
    acme = tenant_clients["acme"]
    g = acme.gateway
    _fails(acme, g.GetDeployment, gateway_pb2.GetDeploymentRequest(name="tenants/-/deployments/" + SECRET * 100),
           pylon.InvalidArgumentError)
    _fails(acme, g.ListDeployments, gateway_pb2.ListDeploymentsRequest(page_token=SECRET * 1000),
           pylon.InvalidArgumentError)
    _fails(acme, g.ScaleDeployment, gateway_pb2.ScaleDeploymentRequest(
        name="tenants/-/deployments/x", replicas=1, etag=SECRET * 100), pylon.InvalidArgumentError)
