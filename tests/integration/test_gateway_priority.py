"""A deployment's priority class, through the real gateway, scheduler and Ray: with both V100
GPUs held by low-priority preemptible training, a deployment at "low" waits behind it, and one at
the default ("high") preempts it through the scheduler (the training checkpoints and is
requeued) and serves. A class the scheduler does not know is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import json
import sys
import time

import pytest
from typer.testing import CliRunner

import pylon
from pylon.cli import app
from tests.support.hf_models import build_model_dir
from tests.support.scripts import checkpointing_loop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# A "training loop" that runs until stopped, checkpointing its step when asked to yield.
TRAIN = checkpointing_loop(0)


def _cli(platform, token: str, *args: str):
    return CliRunner().invoke(app, ["--address", platform.addresses["gateway"], "--token", token, *args])


def test_an_unknown_priority_class_names_the_field(tenant_clients, platform):
    with pytest.raises(pylon.InvalidArgumentError) as e:
        tenant_clients["acme"].deployments.deploy("pr-bad", "models:/whatever@prod", priority_class="urgent")
    assert [v.field for v in e.value.violations] == ["deployment.priority_class"]
    assert "low, normal, high" in e.value.message
    out = _cli(platform, tenant_clients["acme"].token, "deployments", "deploy", "pr-bad", "models:/whatever@prod",
               "--priority-class", "urgent")
    assert isinstance(out.exception, pylon.InvalidArgumentError), out.output  # the flag reached the gateway
    assert "deployment.priority_class" in str(out.exception)


def test_a_high_priority_deployment_preempts_low_priority_training_and_a_low_one_waits(tenant_clients, tmp_path,
                                                                                         platform):
    acme = tenant_clients["acme"]
    mv = acme.models.register("pr-model", str(build_model_dir(tmp_path / "m", "llama")))
    uri = f"models:/pr-model/versions/{mv.version}"
    train = acme.jobs.submit({"priority_class": "low", "preemptible": True,
                              "resources": {"gpus": 2, "gpu_types": ["V100"]},
                              "command": {"argv": [sys.executable, "-c", TRAIN]}})
    try:
        wait_for(lambda: len(acme.jobs.metrics(train.name)) >= 5, 90, "the training to make progress")
        # At "low" the replica waits behind the training: no preemption.
        low = acme.deployments.deploy("pr-low", uri, gpus=1, gpu_types=["V100"], priority_class="low", wait=False)
        assert low.priority_class == "low"
        replica_job = low.replica_status[0].job
        assert acme.jobs.get(replica_job).spec["priority_class"] == "low"
        until = time.monotonic() + 12
        while time.monotonic() < until:
            job, training = acme.jobs.get(replica_job), acme.jobs.get(train.name)
            assert job.state == "pending", job
            assert (training.state, training.preemptions) == ("running", 0), training
            time.sleep(1)
        assert acme.deployments.get("pr-low").state == "pending"
        acme.deployments.delete("pr-low")
        # At the default class ("high") the replica preempts the training.
        dep = acme.deployments.deploy("pr-high", uri, gpus=1, gpu_types=["V100"], timeout=240)
        assert dep.priority_class == "high" and dep.state == "ready"
        assert acme.jobs.get(dep.replica_status[0].job).spec["priority_class"] == "high"
        assert acme.generate("pr-high", "hello", max_tokens=4, temperature=0, timeout=60).replica
        training = acme.jobs.get(train.name)
        assert training.preemptions == 1 and training.retries == 0, training
        assert training.state == "pending", training  # requeued: one V100 is the replica's now
        assert any("checkpointed at step" in line for line in acme.jobs.logs(train.name))
        shown = _cli(platform, acme.token, "deployments", "get", "pr-high", "--json")
        assert shown.exit_code == 0 and json.loads(shown.stdout)["priority_class"] == "high", shown.output
    finally:
        for name in ("pr-low", "pr-high"):
            try:
                acme.deployments.delete(name)
            except pylon.NotFoundError:
                pass
        acme.jobs.cancel(train.name)
