"""gang=false on the Ray cluster with fake GPU nodes: with one V100 and one P100 GPU taken, a
2-worker job that accepts [V100, P100] runs split over both types as gang=false (one placement
group per worker, each worker on its own type, quota and cluster usage counted per type), while
the same job as a gang stays PENDING and explain says why; it runs once a type frees up."""

from __future__ import annotations

import sys

import pytest

from tests.support.waiting import used_gpus, wait_for

pytestmark = pytest.mark.integration

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
WORK = ["sh", "-c", "echo rank=$PYLON_RANK of $PYLON_WORLD_SIZE; sleep 2"]


def _pg_names(prefix: str) -> list[str]:
    import ray

    return sorted(pg["name"] for pg in ray.util.placement_group_table().values()
                  if pg.get("name", "").startswith(prefix) and pg.get("state") == "CREATED")


def test_gang_false_runs_across_two_gpu_types_while_the_gang_waits(tenant_clients):
    acme = tenant_clients["acme"]
    blockers = [acme.jobs.submit({"resources": {"gpus": 1, "gpu_types": [t]}, "command": {"argv": SLEEP}})
                for t in ("V100", "P100")]
    try:
        for b in blockers:
            wait_for(lambda b=b: acme.jobs.get(b.name).state == "running", 90, "the blockers to run")
        spec = {"workers": 2, "resources": {"gpus": 1, "gpu_types": ["V100", "P100"]}, "command": {"argv": WORK}}
        gang = acme.jobs.submit(spec)
        why = wait_for(lambda: " ".join(acme.jobs.explain(gang.name).reasons).count("gang of") and
                    acme.jobs.explain(gang.name), 30, "a pass to explain the gang")
        assert acme.jobs.get(gang.name).state == "pending"
        assert any("a gang of 2 workers x 1 GPUs on one of [V100, P100]: the largest free set is 1 workers" in r
                   for r in why.reasons), why

        split = acme.jobs.submit({**spec, "gang": False})
        running = wait_for(lambda: (j := acme.jobs.get(split.name)).state == "running" and j, 90, "the split job to run")
        assert running.message in ("running on V100+P100", "running on P100+V100"), running.message
        job_id = split.name.rsplit("/", 1)[1]
        assert _pg_names(f"pylon-acme-{job_id}-") == [f"pylon-acme-{job_id}-a1-w0", f"pylon-acme-{job_id}-a1-w1"]
        assert used_gpus(acme, "V100") == 2 and used_gpus(acme, "P100") == 2
        used = {q.name: q.used_gpus for q in acme.queues.list("acme")}["tenants/acme/queues/default"]
        assert used.get("V100") == 2 and used.get("P100") == 2  # quota charged per worker's type
        assert acme.jobs.get(gang.name).state == "pending"

        done = acme.jobs.wait(split.name, timeout=120)
        assert done.state == "succeeded", done.message
        logs = list(acme.jobs.logs(split.name))
        assert "rank=0 of 2" in logs and "rank=1 of 2" in logs
        started = [line for line in logs if line.startswith("attempt 1 worker ")]
        assert sorted(line.rsplit("gpu type ", 1)[1] for line in started) == ["P100)", "V100)"], started
        assert acme.jobs.get(gang.name).state == "pending"  # still no single type with 2 free
    finally:
        for b in blockers:
            acme.jobs.cancel(b.name)
    done = acme.jobs.wait(gang.name, timeout=120)  # a type freed up: the gang runs whole on it
    assert done.state == "succeeded" and done.gpu_type in ("V100", "P100"), done.message
