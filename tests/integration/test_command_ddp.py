"""Data-parallel user commands through the real scheduler on the real Ray cluster: each worker of a
gang gets torchrun's variables with one rendezvous address, and ``examples/ddp_train.py`` (plain
PyTorch DDP over gloo) trains on two workers that end with equal parameters, leaving whole
checkpoints behind."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GANG = {"workers": 2, "resources": {"gpus": 1, "gpu_types": ["K80"]}}


def test_each_worker_of_a_gang_gets_torchruns_variables(tenant_clients):
    acme = tenant_clients["acme"]
    script = ('echo "env rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE '
              'master=$MASTER_ADDR:$MASTER_PORT pylon=$PYLON_RANK/$PYLON_WORLD_SIZE"')
    job = acme.jobs.submit({**GANG, "command": {"argv": ["sh", "-c", script]}})
    job = acme.jobs.wait(job.name, timeout=120)
    assert job.state == "succeeded", job.message
    lines = [line for line in acme.jobs.logs(job.name) if line.startswith("env ")]
    found = {m.group(1): m.groups() for line in lines
             if (m := re.fullmatch(r"env rank=(\d) world=2 local=0/1 master=([\d.]+):(\d+) pylon=(\d)/2", line))}
    assert sorted(found) == ["0", "1"], lines
    assert found["0"][1:3] == found["1"][1:3]  # one master address for the gang
    assert all(g[0] == g[3] for g in found.values())  # RANK is PYLON_RANK


def test_the_ddp_example_trains_on_two_workers_in_step_and_checkpoints(tenant_clients, platform):
    from pylon_services.storage.factory import open_store

    acme = tenant_clients["acme"]
    job = acme.jobs.submit({**GANG, "checkpoint_every_steps": 10,
                            "command": {"argv": [sys.executable, "ddp_train.py", "--steps", "30"],
                                        "working_dir": str(EXAMPLES)}})
    job = _wait_or_explain(acme, job.name, 300)
    logs = list(acme.jobs.logs(job.name))
    assert job.state == "succeeded", (job.message, logs[-30:])
    assert any(line.startswith("rank 0/2 on cpu: starting") for line in logs), logs
    assert any(line.startswith("rank 1/2 on cpu: starting") for line in logs), logs
    done = {m.group(1): m.group(2) for line in logs
            if (m := re.fullmatch(r"rank (\d) done at step 30: loss [\d.]+ param checksum (\S+)", line))}
    assert sorted(done) == ["0", "1"] and done["0"] == done["1"], logs[-20:]
    store = open_store(platform.base["object_store_url"])
    prefix = f"{job.name}/checkpoint/"
    manifest = json.loads(store.get(prefix + "step-000000000020/manifest.json"))
    assert (manifest["step"], manifest["world_size"]) == (20, 2)
    for rank in (0, 1):
        assert store.exists(f"{prefix}step-000000000020/rank-{rank}/checkpoint.pt")
    assert [p.step for p in acme.jobs.metrics(job.name) if p.key == "loss"][-1] == 30


def _wait_or_explain(client, name: str, timeout: float):
    """The job once it ends; on a timeout, fails with its state, message and last log lines (a
    hung gang says where it hung)."""
    from pylon.errors import DeadlineExceededError

    try:
        return client.jobs.wait(name, timeout=timeout)
    except DeadlineExceededError:
        job = client.jobs.get(name)
        client.jobs.cancel(name)
        pytest.fail(f"{name} did not end in {timeout:g}s: {job.state} {job.message!r}; "
                    f"last log lines: {list(client.jobs.logs(name))[-40:]}")
