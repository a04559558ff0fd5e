"""The kopf handlers against our fake Kubernetes port where no Pylon service is needed: a scheduler
that cannot be reached (a real gRPC channel to a closed port), the finalizer's no-op paths, and the
wiring (every handler registered, kopf's progress kept in the status)."""

from __future__ import annotations

import kopf
import pytest

from pylon_operator import handlers
from pylon_operator.conditions import condition
from pylon_operator.pylon_api import PylonApi
from pylon_operator.settings import OperatorSettings
from pylon_services.localstack.procs import free_port
from tests.operator.fake_kube import FakeKube
from tests.operator.support import memo_for, sample


@pytest.fixture
def unreachable() -> PylonApi:
    """Every service at an address where nothing listens: calls fail with UNAVAILABLE."""
    address = f"127.0.0.1:{free_port()}"
    api = PylonApi({"scheduler": address, "gateway": address, "ingest": address}, "pyl_none", timeout=5)
    yield api
    api.close()


def test_unreachable_scheduler_is_a_temporary_error_with_backoff_and_a_condition(unreachable):
    kube = FakeKube()
    body = kube.add(sample("trainingjob-command.yaml"), "trainingjobs")
    memo = memo_for(unreachable, kube)
    with pytest.raises(kopf.TemporaryError) as first:
        handlers.training_job_create(body=body, memo=memo, retry=0)
    assert first.value.delay == 2.0
    with pytest.raises(kopf.TemporaryError) as third:
        handlers.training_job_create(body=kube.body("trainingjobs", "default", "hello"), memo=memo, retry=2)
    assert third.value.delay == 8.0
    status = kube.body("trainingjobs", "default", "hello")["status"]
    ready = condition(status["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SchedulerUnavailable")
    assert "the scheduler is unreachable" in ready["message"]
    assert condition(status["conditions"], "Reconciling")["status"] == "True"  # kstatus: InProgress
    assert status["phase"] == "Pending" and "jobName" not in status
    assert kube.events[-1][1:2] == ("SchedulerUnavailable",) and kube.events[-1][3] is True


def test_backoff_is_capped():
    settings = OperatorSettings(operator_max_backoff_s=60)
    assert [handlers.backoff_s(r, settings) for r in (0, 1, 5, 50)] == [2.0, 4.0, 60.0, 60.0]
    assert handlers.backoff_s(0, settings, hint=9.0) == 9.0  # the server's RetryInfo wins when longer


def test_delete_keeps_the_finalizer_while_the_scheduler_is_unreachable(unreachable):
    kube = FakeKube()
    obj = sample("trainingjob-command.yaml")
    obj["status"] = {"jobName": "tenants/acme/jobs/j1", "phase": "Running"}
    body = kube.add(obj, "trainingjobs")
    with pytest.raises(kopf.TemporaryError):
        handlers.training_job_delete(body=body, memo=memo_for(unreachable, kube), retry=0)


def test_delete_of_an_unsubmitted_or_finished_job_calls_nothing(unreachable):
    kube = FakeKube()
    memo = memo_for(unreachable, kube)
    for status in ({}, {"jobName": "tenants/acme/jobs/j1", "phase": "Succeeded"}):
        obj = {**sample("trainingjob-command.yaml"), "status": status}
        handlers.training_job_delete(body=kube.add(obj, "trainingjobs"), memo=memo, retry=0)  # no error: no call


def test_sync_while_unreachable_says_so_and_keeps_the_phase(unreachable):
    kube = FakeKube()
    obj = {**sample("trainingjob-command.yaml"), "status": {"jobName": "tenants/acme/jobs/j1", "phase": "Running"}}
    body = kube.add(obj, "trainingjobs")
    handlers.training_job_sync(body=body, memo=memo_for(unreachable, kube))
    status = kube.body("trainingjobs", "default", "hello")["status"]
    assert status["phase"] == "Running" and condition(status["conditions"], "Ready")["reason"] == "SchedulerUnavailable"


def test_other_kinds_retry_while_their_service_is_unreachable(unreachable):
    kube = FakeKube()
    memo = memo_for(unreachable, kube)
    with pytest.raises(kopf.TemporaryError):
        handlers.model_deployment_reconcile(body=kube.add(sample("modeldeployment.yaml"), "modeldeployments"),
                                            memo=memo, retry=0)
    with pytest.raises(kopf.TemporaryError):
        handlers.dataset_create(body=kube.add(sample("dataset.yaml"), "datasets"), memo=memo, retry=0)
    md = kube.body("modeldeployments", "ml-team", "my-lm")["status"]
    ds = kube.body("datasets", "ml-team", "web-docs")["status"]
    assert condition(md["conditions"], "Ready")["reason"] == "GatewayUnavailable"
    assert condition(ds["conditions"], "Ready")["reason"] == "IngestUnavailable"


def test_pool_scaling_skips_a_round_when_the_scheduler_is_unreachable(unreachable):
    kube = FakeKube()
    body = kube.add(sample("raycluster-gpu-pools.yaml"), "rayclusters")
    assert handlers.raycluster_scale(body=body, memo=memo_for(unreachable, kube)) is None
    assert kube.raycluster_patches == []


def test_every_handler_is_registered_and_progress_lives_in_the_status():
    registry = kopf.OperatorRegistry()
    handlers.register(registry, OperatorSettings())
    names = {h.fn.__name__ for h in registry._changing.get_all_handlers()}
    assert {"training_job_create", "training_job_delete", "model_deployment_reconcile", "model_deployment_delete",
            "dataset_create", "dataset_delete"} <= names
    updates = {h.field for h in registry._changing.get_all_handlers()
               if h.fn is handlers.model_deployment_reconcile and h.field}
    assert updates == {("spec", "replicas"), ("spec", "sharedWith")}
    timers = {h.fn.__name__ for h in registry._spawning.get_all_handlers()}
    assert timers == {"training_job_sync", "model_deployment_sync", "dataset_sync", "_raycluster_timer"}
    settings = kopf.OperatorSettings()
    handlers.configure_kopf(settings=settings)
    assert isinstance(settings.persistence.progress_storage, kopf.StatusProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.StatusDiffBaseStorage)
