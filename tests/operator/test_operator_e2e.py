"""End to end against the real Pylon services (the in-process platform: real Redis, real Ray with
fake GPU nodes, real gRPC servers): TrainingJob objects driven through the operator's handlers
submit real jobs, and their status follows them; ModelDeployment objects create, share and delete
real gateway deployments; only Kubernetes is our fake port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from pylon_operator import handlers
from pylon_operator.conditions import condition
from pylon_operator.pylon_api import PylonApi
from tests.operator.fake_kube import FakeKube
from tests.operator.support import memo_for, sample

pytestmark = pytest.mark.integration
TENANT = "k8s-ops"  # a tenant of its own: its pending jobs are the only demand the pool test sees


@pytest.fixture(scope="module")
def token(admin_client: Any) -> str:
    """An editor key of TENANT, the operator's."""
    return str(admin_client.admin.create_key(TENANT, "editor")[1])


@pytest.fixture(scope="module")
def api(token: str, platform: Any) -> Iterator[PylonApi]:
    """The operator's Pylon calls with an editor key of TENANT, at the services' own addresses."""
    api = PylonApi({s: platform.addresses[s] for s in ("scheduler", "gateway", "ingest")}, token, timeout=30)
    yield api
    api.close()


def training_job(kube: FakeKube, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    obj = sample("trainingjob-command.yaml")
    obj["metadata"]["name"], obj["spec"] = name, spec
    return kube.add(obj, "trainingjobs")


def sync_until(kube: FakeKube, memo: Any, name: str, phases: set[str], timeout: float = 150) -> dict[str, Any]:
    """Run the status timer as kopf would (faster) until the phase is one of ``phases``."""
    deadline = time.time() + timeout
    while True:
        handlers.training_job_sync(body=kube.body("trainingjobs", "default", name), memo=memo)
        status = kube.body("trainingjobs", "default", name)["status"]
        if status.get("phase") in phases:
            return status
        assert time.time() < deadline, status
        time.sleep(0.5)


def test_training_job_runs_on_the_scheduler_and_its_status_follows_it_to_success(api, admin_client):
    kube = FakeKube()
    memo = memo_for(api, kube)
    body = training_job(kube, "hello", {"command": {"argv": ["sh", "-c", "echo hi from k8s"]}, "maxRetries": 0})
    handlers.training_job_create(body=body, memo=memo, retry=0)
    status = kube.body("trainingjobs", "default", "hello")["status"]
    assert status["jobName"].startswith(f"tenants/{TENANT}/jobs/") and status["phase"] in {"Pending", "Starting", "Running"}
    # A retried create (kopf after a crash) is the same job: the uid is the request_id.
    again = kube.body("trainingjobs", "default", "hello")
    again.pop("status")
    handlers.training_job_create(body=again, memo=memo, retry=1)
    assert kube.body("trainingjobs", "default", "hello")["status"]["jobName"] == status["jobName"]

    status = sync_until(kube, memo, "hello", {"Succeeded", "Failed", "Cancelled"})
    assert status["phase"] == "Succeeded", status
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True"}  # kstatus: Current
    assert status["observedGeneration"] == 1 and status["exitCode"] == 0 and "endTime" in status
    job = admin_client.jobs.get(status["jobName"])  # what the scheduler itself says
    assert job.state == "succeeded"
    assert job.spec["labels"] == {"k8s.pylon.dev/namespace": "default", "k8s.pylon.dev/name": "hello"}
    assert [e[1] for e in kube.events if e[0] == "hello"][-1] == "Succeeded"


def test_invalid_spec_is_failed_with_the_schedulers_message_and_never_retried(api):
    kube = FakeKube()
    body = training_job(kube, "bad", {"trainer": {"trainer": "no-such-trainer"}})
    with pytest.raises(kopf.PermanentError) as e:
        handlers.training_job_create(body=body, memo=memo_for(api, kube), retry=0)
    assert "INVALID_ARGUMENT" in str(e.value) and "spec.trainer.trainer" in str(e.value)
    status = kube.body("trainingjobs", "default", "bad")["status"]
    assert status["phase"] == "Failed" and "jobName" not in status
    stalled = condition(status["conditions"], "Stalled")
    assert stalled["status"] == "True" and "INVALID_ARGUMENT" in stalled["message"]
    assert "spec.trainer.trainer" in condition(status["conditions"], "Ready")["message"]
    # kopf resumes the object later (a restart): nothing is submitted again.
    handlers.training_job_create(body=kube.body("trainingjobs", "default", "bad"), memo=memo_for(api, kube), retry=5)
    assert kube.body("trainingjobs", "default", "bad")["status"]["phase"] == "Failed"


def test_deleting_a_running_training_job_cancels_the_job_first(api, admin_client):
    kube = FakeKube()
    memo = memo_for(api, kube)
    body = training_job(kube, "long", {"command": {"argv": ["sleep", "300"]}})
    handlers.training_job_create(body=body, memo=memo, retry=0)
    status = sync_until(kube, memo, "long", {"Running"}, timeout=120)
    handlers.training_job_delete(body=kube.body("trainingjobs", "default", "long"), memo=memo, retry=0)
    # The handler returned, so kopf would now remove the finalizer: the job is already cancelled.
    assert admin_client.jobs.get(status["jobName"]).state == "cancelled"


def test_gpu_pool_grows_from_zero_for_pending_demand_and_back(api):
    """The platform declares an A100 pool of 0..2 nodes of 8 GPUs with no node up: a pending job
    for 2x4 A100 GPUs makes the operator set the a100 group to one replica; once cancelled and
    the scale-down delay passed, back to zero."""
    kube = FakeKube()
    memo = memo_for(api, kube, operator_scale_down_delay_s=0)
    rc = sample("raycluster-gpu-pools.yaml")
    body = kube.add(rc, "rayclusters")
    assert handlers.raycluster_scale(body=body, memo=memo) is None  # no demand: groups at their minimum
    job = api.submit_job("-", {"workers": 2, "resources": {"gpus": 4, "gpuTypes": ["A100"]},
                               "command": {"argv": ["true"]}}, "k8s-pool-test-1")
    try:
        assert api.get_job(job.name).state == "pending"
        changed = handlers.raycluster_scale(body=kube.body("rayclusters", "pylon", "pylon"), memo=memo)
        assert changed == {"a100": 1}
        groups = kube.body("rayclusters", "pylon", "pylon")["spec"]["workerGroupSpecs"]
        assert [(g["groupName"], g["replicas"]) for g in groups] == [("a100", 1), ("l4", 1)]
    finally:
        api.cancel_job(job.name)
    assert handlers.raycluster_scale(body=kube.body("rayclusters", "pylon", "pylon"), memo=memo) == {"a100": 0}


def test_model_deployment_of_a_missing_model_is_failed_with_the_gateways_message(api):
    kube = FakeKube()
    obj = sample("modeldeployment.yaml")
    obj["spec"] = {"modelUri": "models:/no-such-model@prod", "replicas": 1}
    body = kube.add(obj, "modeldeployments")
    with pytest.raises(kopf.PermanentError) as e:
        handlers.model_deployment_reconcile(body=body, memo=memo_for(api, kube), retry=0)
    assert "NOT_FOUND" in str(e.value)
    status = kube.body("modeldeployments", "ml-team", "my-lm")["status"]
    assert status["phase"] == "Failed" and "NOT_FOUND" in condition(status["conditions"], "Ready")["message"]


def _served_to(client: Any) -> set[str]:
    return {m.deployment for m in client.deployments.models()}


def test_model_deployment_is_shared_as_its_spec_says_and_follows_its_edits(api, token, platform, tenant_clients,
                                                                            tmp_path):
    """sharedWith and priorityClass reach CreateDeployment; an edit of sharedWith is an
    UpdateDeploymentSharing the other tenants see at once; a list the gateway refuses (the owner
    itself) fails that generation with the gateway's field, and the next edit recovers."""
    import pylon
    from tests.support.hf_models import build_model_dir

    with pylon.Client(platform.addresses["gateway"], token) as owner:
        mv = owner.models.register("k8s-shared", str(build_model_dir(tmp_path / "m")))
    kube = FakeKube()
    memo = memo_for(api, kube)
    obj = sample("modeldeployment.yaml")
    obj["metadata"]["name"] = "k8s-shared"
    obj["spec"] = {"modelUri": f"models:/k8s-shared/versions/{mv.version}", "replicas": 1, "priorityClass": "normal",
                   "sharedWith": ["globex"]}
    body = kube.add(obj, "modeldeployments")
    full, acme, globex = f"tenants/{TENANT}/deployments/k8s-shared", tenant_clients["acme"], tenant_clients["globex"]

    def reconcile() -> dict[str, Any]:
        handlers.model_deployment_reconcile(body=kube.body("modeldeployments", "ml-team", "k8s-shared"), memo=memo)
        return kube.body("modeldeployments", "ml-team", "k8s-shared")["status"]  # type: ignore[no-any-return]

    try:
        handlers.model_deployment_reconcile(body=body, memo=memo, retry=0)
        status = kube.body("modeldeployments", "ml-team", "k8s-shared")["status"]
        assert (status["deploymentName"], status["sharedWith"], status["priorityClass"]) == (full, ["globex"], "normal")
        dep = api.get_deployment(full)
        assert (dep.shared_with, dep.priority_class) == (["globex"], "normal")
        assert full in _served_to(globex) and full not in _served_to(acme)

        kube.edit_spec("modeldeployments", "ml-team", "k8s-shared", {"sharedWith": ["acme", "globex"]})
        status = reconcile()
        assert sorted(api.get_deployment(full).shared_with) == ["acme", "globex"] == sorted(status["sharedWith"])
        assert status["observedGeneration"] == 2 and full in _served_to(acme)

        kube.edit_spec("modeldeployments", "ml-team", "k8s-shared", {"sharedWith": [TENANT]})
        with pytest.raises(kopf.PermanentError) as e:
            reconcile()
        assert "INVALID_ARGUMENT" in str(e.value) and "shared_with[0]" in str(e.value)
        assert kube.body("modeldeployments", "ml-team", "k8s-shared")["status"]["phase"] == "Failed"
        assert sorted(api.get_deployment(full).shared_with) == ["acme", "globex"]  # unchanged

        kube.edit_spec("modeldeployments", "ml-team", "k8s-shared", {"sharedWith": None})  # shared with no one
        status = reconcile()
        assert api.get_deployment(full).shared_with == [] == status["sharedWith"] and status["phase"] != "Failed"
        assert full not in _served_to(globex) | _served_to(acme) and status["priorityClass"] == "normal"
    finally:
        handlers.model_deployment_delete(body=kube.body("modeldeployments", "ml-team", "k8s-shared"), memo=memo)
