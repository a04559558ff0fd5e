"""SchedulerService through the real in-process platform (real Redis, object store, a Ray
cluster with fake V100/P100/K80 nodes): bad input, quotas and ExplainJob, cluster and queues."""

from __future__ import annotations

import time

import pytest

from pylon.errors import PylonError

pytestmark = pytest.mark.integration


def _code(e: PylonError) -> str:
    return str(getattr(e, "code", "")) + " " + str(e)


@pytest.mark.parametrize("resources, words", [
    ({"gpus": 8, "gpu_types": ["V100"]}, "node has 2 GPUs"),
    ({"gpus": 1, "gpu_types": ["H100"]}, "unknown GPU type"),
])
def test_unsatisfiable_request_is_rejected_at_submit(tenant_clients, resources, words):
    with pytest.raises(PylonError) as e:
        tenant_clients["acme"].jobs.submit({"resources": resources, "command": {"argv": ["true"]}})
    assert "FAILED_PRECONDITION" in _code(e.value) and words in str(e.value)


def _autoscaler_request() -> list[dict]:
    """What Ray's (v1) autoscaler would read: the bundles of the last request_resources call."""
    import json

    import ray
    from ray.experimental.internal_kv import _internal_kv_get

    assert ray.is_initialized()
    raw = _internal_kv_get(b"autoscaler_resource_request")
    return json.loads(raw) if raw else []


def test_a_declared_pool_scaled_to_zero_takes_jobs_and_asks_the_autoscaler(tenant_clients):
    """The A100 pool (declared in tests/support/fixtures.py, max 2 nodes of 8 GPUs) has no node:
    a job for it waits instead of being refused, and the leader asks Ray's autoscaler for it."""
    acme = tenant_clients["acme"]
    with pytest.raises(PylonError) as e:  # more than a declared node holds: still refused
        acme.jobs.submit({"resources": {"gpus": 16, "gpu_types": ["A100"]}, "command": {"argv": ["true"]}})
    assert "FAILED_PRECONDITION" in _code(e.value) and "the largest A100 node has 8 GPUs" in str(e.value)
    job = acme.jobs.submit({"workers": 2, "resources": {"gpus": 4, "gpu_types": ["A100"]},
                            "command": {"argv": ["true"]}})
    deadline = time.time() + 30
    want = {"GPU": 4.0, "CPU": 1.0, "accelerator_type:A100": 0.001}
    while _autoscaler_request().count(want) != 2:
        assert time.time() < deadline, f"autoscaler request is {_autoscaler_request()}"
        time.sleep(0.2)
    assert acme.jobs.get(job.name).state == "pending"
    reasons = acme.jobs.explain(job.name).reasons
    assert "no pool of an acceptable GPU type ['A100'] is up" in reasons and len(set(reasons)) == len(reasons)
    assert any("A100 pool may grow" in r for r in reasons), reasons
    pools = {p.gpu_type: p for p in acme.jobs.cluster()}
    assert (pools["A100"].nodes, pools["A100"].max_nodes) == (0, 2)
    acme.jobs.cancel(job.name)
    while _autoscaler_request().count(want):  # withdrawn with the job
        assert time.time() < deadline + 30, f"autoscaler request is {_autoscaler_request()}"
        time.sleep(0.2)


def test_gang_larger_than_every_pool_is_rejected_at_submit(tenant_clients):
    with pytest.raises(PylonError) as e:
        tenant_clients["acme"].jobs.submit({"workers": 3, "resources": {"gpus": 2, "gpu_types": ["V100"]},
                                            "command": {"argv": ["true"]}})
    assert "FAILED_PRECONDITION" in _code(e.value) and "gang of 3" in str(e.value)


def test_unknown_priority_class_and_queue_are_rejected(tenant_clients):
    with pytest.raises(PylonError) as e:
        tenant_clients["acme"].jobs.submit({"priority_class": "urgent", "command": {"argv": ["true"]}})
    assert "INVALID_ARGUMENT" in _code(e.value) and "priority_class" in str(e.value)
    with pytest.raises(PylonError) as e:
        tenant_clients["acme"].jobs.submit({"queue": "nope", "command": {"argv": ["true"]}})
    assert "NOT_FOUND" in _code(e.value)


def test_same_request_id_twice_is_one_job(tenant_clients):
    acme = tenant_clients["acme"]
    spec = {"command": {"argv": ["true"]}}
    a = acme.jobs.submit(spec, request_id="sched-api-same-1")
    b = acme.jobs.submit(spec, request_id="sched-api-same-1")
    assert a.name == b.name
    assert sum(j.name == a.name for j in acme.jobs.list(page_size=200)) == 1
    assert acme.jobs.wait(a.name, timeout=120).state == "succeeded"


def test_cancel_of_a_finished_job_is_failed_precondition_and_changes_nothing(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.wait(acme.jobs.submit({"command": {"argv": ["true"]}}).name, timeout=120)
    with pytest.raises(PylonError) as e:
        acme.jobs.cancel(job.name)
    assert "FAILED_PRECONDITION" in _code(e.value)
    assert acme.jobs.get(job.name).state == "succeeded"


def test_crashing_job_fails_with_exit_code_and_last_lines_after_retries(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"max_retries": 2, "command": {"argv": ["sh", "-c", "echo boom-line; exit 7"]}})
    job = acme.jobs.wait(job.name, timeout=180)
    assert (job.state, job.exit_code, job.attempt, job.retries) == ("failed", 7, 3, 2)
    assert "boom-line" in job.last_log_lines
    assert sum(line == "boom-line" for line in acme.jobs.logs(job.name)) == 3


def test_over_quota_stays_pending_and_explain_says_why(admin_client, tenant_clients):
    acme = tenant_clients["acme"]
    admin_client.queues.create("acme", "tiny", nominal_gpus={"P100": 1})
    job = acme.jobs.submit({"queue": "tiny", "resources": {"gpus": 2, "gpu_types": ["P100"]},
                            "command": {"argv": ["true"]}})
    try:
        deadline, why = time.time() + 30, None
        while time.time() < deadline:
            why = acme.jobs.explain(job.name)
            if "quota" in " ".join(why.reasons):
                break
            time.sleep(0.3)
        text = " ".join(why.reasons)
        assert "tenants/acme/queues/tiny" in text and "P100" in text and "0/1" in text, text
        assert why.position >= 1
        assert acme.jobs.get(job.name).state == "pending"
        queues = {q.name: q for q in acme.queues.list()}
        assert queues["tenants/acme/queues/tiny"].nominal_gpus == {"P100": 1.0}
        assert queues["tenants/acme/queues/tiny"].pending_jobs == 1
    finally:
        assert acme.jobs.cancel(job.name).state == "cancelled"


def test_queue_admin_rpcs_need_admin_and_validate(admin_client, tenant_clients):
    with pytest.raises(PylonError) as e:
        tenant_clients["acme"].queues.create("acme", "mine", nominal_gpus={"V100": 1})
    assert "PERMISSION_DENIED" in _code(e.value)
    with pytest.raises(PylonError) as e:
        admin_client.queues.create("acme", "neg", nominal_gpus={"V100": -1})
    assert "INVALID_ARGUMENT" in _code(e.value)
    admin_client.queues.create("acme", "twice", nominal_gpus={"V100": 1}, cohort="lab")
    with pytest.raises(PylonError) as e:
        admin_client.queues.create("acme", "twice", nominal_gpus={"V100": 1})
    assert "ALREADY_EXISTS" in _code(e.value)
    updated = admin_client.queues.update("tenants/acme/queues/twice", nominal_gpus={"V100": 2}, cohort="lab")
    assert updated.nominal_gpus == {"V100": 2.0}
    with pytest.raises(PylonError) as e:
        admin_client.queues.update("tenants/acme/queues/absent", nominal_gpus={})
    assert "NOT_FOUND" in _code(e.value)


def test_cluster_shows_pools_discovered_from_ray(tenant_clients):
    pools = {p.gpu_type: p for p in tenant_clients["acme"].jobs.cluster()}
    assert {"V100", "P100", "K80", "cpu"} <= set(pools)
    assert (pools["V100"].total_gpus, pools["K80"].total_gpus) == (2.0, 4.0)
    assert pools["V100"].healthy_nodes == pools["V100"].nodes == 1


def test_running_job_reports_metrics_and_uses_capacity(tenant_clients, redis_client):
    acme = tenant_clients["acme"]
    script = ("import time, pylon.train as t\n"
              "for s in range(1, 31):\n    time.sleep(0.1)\n    t.report(s, loss=1.0 / s)\n")
    import sys

    job = acme.jobs.submit({"resources": {"gpus": 1, "gpu_types": ["K80"]},
                            "command": {"argv": [sys.executable, "-c", script]}})
    deadline = time.time() + 60
    while time.time() < deadline and acme.jobs.get(job.name).state != "running":
        time.sleep(0.2)
    pools = {p.gpu_type: p for p in acme.jobs.cluster()}
    assert pools["K80"].used_gpus >= 1
    job = acme.jobs.wait(job.name, timeout=120)
    assert job.state == "succeeded"
    points = [p for p in acme.jobs.metrics(job.name) if p.key == "loss"]
    assert [p.step for p in points] == list(range(1, 31))
    # Its step rate reached the throughput table the policies read (about 10 steps/s).
    import json

    rate = json.loads(redis_client.get("pylon:throughput"))["rates"]["command"]["K80"]
    assert 2 < rate < 20
