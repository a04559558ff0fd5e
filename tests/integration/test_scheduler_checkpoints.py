"""checkpoint_every_steps end to end on the Ray cluster: a job whose worker process dies after a
periodic checkpoint is retried (max_retries) and its second attempt resumes at that checkpoint's
step, not at step 0 - for a user command (pylon.train.should_checkpoint / checkpoint_saved) and
for the causal-lm trainer. A negative value is rejected at submit."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest

from pylon.errors import PylonError
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# 40 steps; a checkpoint every checkpoint_every() steps; attempt 1 kills its own Ray worker (the
# parent process) at step 13, so only the periodic upload can have kept its progress.
CRASHING = """
import os, time
import pylon.train as t
ck = os.path.join(t.checkpoint_dir(), "step")
step = int(open(ck).read()) if os.path.exists(ck) else 0
print(f"every {t.checkpoint_every()}; attempt {os.environ['PYLON_ATTEMPT']} starting at step {step}", flush=True)
while step < 40:
    time.sleep(0.02)
    step += 1
    t.report(step, loss=1.0 / step)
    if t.should_checkpoint(step):
        open(ck + ".tmp", "w").write(str(step))
        os.replace(ck + ".tmp", ck)
        assert t.checkpoint_saved(step)
        print(f"saved step {step}", flush=True)
    if os.environ["PYLON_ATTEMPT"] == "1" and step == 13:
        print("crashing", flush=True)
        os.kill(os.getppid(), 9)
        time.sleep(60)
print("finished at step", step, flush=True)
"""


def test_negative_checkpoint_every_steps_is_invalid_argument(tenant_clients):
    acme = tenant_clients["acme"]
    before = len(list(acme.jobs.list(page_size=500)))
    with pytest.raises(PylonError) as e:
        acme.jobs.submit({"checkpoint_every_steps": -1, "command": {"argv": ["true"]}})
    assert "INVALID_ARGUMENT" in str(e.value.code) and "checkpoint_every_steps" in str(e.value)
    assert len(list(acme.jobs.list(page_size=500))) == before


def test_crashed_command_is_retried_from_its_latest_periodic_checkpoint(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"max_retries": 1, "checkpoint_every_steps": 5, "total_steps": 40,
                            "resources": {"gpus": 1, "gpu_types": ["K80"]},
                            "command": {"argv": [sys.executable, "-c", CRASHING]}})
    job = acme.jobs.wait(job.name, timeout=180)
    assert (job.state, job.attempt, job.retries) == ("succeeded", 2, 1), job.message
    logs = list(acme.jobs.logs(job.name))
    assert "every 5; attempt 1 starting at step 0" in logs  # ("crashing" dies with the worker unread)
    assert "every 5; attempt 2 starting at step 10" in logs  # the last checkpoint before step 13
    assert "finished at step 40" in logs
    steps = [p.step for p in acme.jobs.metrics(job.name) if p.key == "loss"]
    # Attempt 1 reported 1..k (its last lines may die unread with the worker), attempt 2 11..40.
    split = len(steps) - 30
    assert split >= 10 and steps[:split] == list(range(1, split + 1)) and steps[split:] == list(range(11, 41)), steps


def test_crashed_trainer_is_retried_from_its_latest_periodic_checkpoint(tenant_clients, platform, corpus):
    from pylon_services.storage.factory import open_store
    from pylon_services.workloads.checkpoints import checkpoint_steps

    acme = tenant_clients["acme"]
    cfg = {"seq_len": 32, "batch_size": 4, "steps": 300, "warmup": 0, "log_every": 10}  # the tiny preset
    job = acme.jobs.submit({"max_retries": 1, "checkpoint_every_steps": 10,
                            "trainer": {"trainer": "causal-lm", "datasets": [corpus], "config": cfg}})
    store = open_store(platform.base["object_store_url"])
    saved = wait_for(lambda: checkpoint_steps(store, f"{job.name}/checkpoint/"), 180, "the first periodic checkpoint")
    text = "\n".join(acme.jobs.logs(job.name))
    pid = int(re.search(r"attempt 1 worker 0 started on .* \(pid (\d+),", text).group(1))
    os.kill(pid, signal.SIGKILL)  # the worker process dies: no result, no checkpoint at exit
    job = acme.jobs.wait(job.name, timeout=300)
    assert (job.state, job.attempt, job.retries, job.step) == ("succeeded", 2, 1, 300), job.message
    logs = list(acme.jobs.logs(job.name))
    second = next(i for i, line in enumerate(logs) if line.startswith("attempt 2 worker 0 started"))
    resumed = int(re.search(r"; resumed at step (\d+)", "\n".join(logs[second:])).group(1))
    assert resumed % 10 == 0 and resumed >= max(saved)  # a periodic checkpoint, at least the one seen
    assert not any("resumed at step" in line for line in logs[:second])  # attempt 1 started from step 0
    # Metrics (every 10 steps): attempt 1 up to where it died, attempt 2 from the checkpoint on.
    steps = [p.step for p in acme.jobs.metrics(job.name) if p.key == "loss"]
    drops = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(drops) <= 1 and steps[-1] == 300
    if drops:
        assert steps[drops[0]] == resumed + 10
