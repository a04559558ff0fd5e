"""Preemption that keeps progress, end to end on the Ray cluster with fake GPU nodes: a
high-priority job preempts a low-priority one on V100; the low one sees should_preempt(),
checkpoints, is requeued, resumes from its checkpoint step (not step 0) and finishes. (The
built-in causal-lm trainer's preemption: test_causal_lm_jobs.py.)"""

from __future__ import annotations

import re
import sys

import pytest

from tests.support.scripts import checkpointing_loop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# A "training loop": 80 steps of 0.1 s, checkpointing its step when asked to yield.
LOW = checkpointing_loop(80)




def test_high_priority_job_preempts_low_which_resumes_from_its_checkpoint(tenant_clients):
    acme = tenant_clients["acme"]
    low = acme.jobs.submit({"priority_class": "low", "preemptible": True, "total_steps": 80,
                            "resources": {"gpus": 2, "gpu_types": ["V100"]},
                            "command": {"argv": [sys.executable, "-c", LOW]}})
    wait_for(lambda: len(acme.jobs.metrics(low.name)) >= 10, 90, "the low job to make progress")
    high = acme.jobs.submit({"priority_class": "high", "resources": {"gpus": 2, "gpu_types": ["V100"]},
                             "command": {"argv": ["sh", "-c", "echo high ran"]}})
    high = acme.jobs.wait(high.name, timeout=120)
    assert high.state == "succeeded" and high.gpu_type == "V100"
    low = acme.jobs.wait(low.name, timeout=180)
    assert low.state == "succeeded" and low.preemptions == 1 and low.retries == 0 and low.attempt == 2
    logs = list(acme.jobs.logs(low.name))
    saved = int(re.search(r"checkpointed at step (\d+)", "\n".join(logs)).group(1))
    assert saved >= 10
    assert "starting at step 0" in logs and f"starting at step {saved}" in logs
    assert logs.index(f"starting at step {saved}") > logs.index(f"checkpointed at step {saved}")
    assert "finished at step 80" in logs
    # The high job ran while the low one was off the GPUs: between its checkpoint and its resume.
    steps = [p.step for p in acme.jobs.metrics(low.name) if p.key == "loss"]
    assert steps == list(range(1, saved + 1)) + list(range(saved + 1, 81))
