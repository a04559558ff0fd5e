"""The causal-lm trainer through the real platform: a 2-worker gang on the Ray cluster trains on a
tokenized dataset version, shows live progress as its trainer status, and its output is
registered with lineage and an alias; a higher-priority job preempts a training run, which
checkpoints, is requeued and resumes where it stopped; a killed worker restarts the job from its
last checkpoint."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest

from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}


def _spec(dataset: str, **config: Any) -> dict[str, Any]:
    cfg = {"model": MODEL, "seq_len": 32, "batch_size": 4, "steps": 30, "lr": 3e-3, "warmup": 2, "log_every": 2,
           "eval_fraction": 0.05, **config}
    return {"trainer": {"trainer": "causal-lm", "datasets": [dataset], "config": cfg}, "resources": {"cpus": 1},
            "checkpoint_every_steps": 5}


def test_a_gang_trains_reports_progress_and_its_output_is_registered_with_lineage(tenant_clients, corpus):
    acme = tenant_clients["acme"]
    spec = _spec(corpus.replace(corpus.rsplit("/", 1)[1], "latest"))
    spec["workers"] = 2
    spec["trainer"]["register_model"] = {"model": "lm-docs", "alias": "prod"}
    job = acme.jobs.submit(spec)
    assert job.spec["trainer"]["datasets"] == [corpus]  # latest pinned at submit
    done = acme.jobs.wait(job.name, timeout=300)
    assert done.state == "succeeded", (done.message, done.last_log_lines)
    status = done.trainer_status
    assert status is not None and status.progress_percentage == 100 and status.step == status.total_steps == 30
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(status.metrics)
    logs = list(acme.jobs.logs(done.name))
    assert any(line.startswith("step 30/30 loss=") for line in logs)
    assert sum("joined the gloo group of 2" in line for line in logs) == 2
    registered = wait_for(lambda: acme.jobs.get(job.name).registered_model_version, 60, "the registration")
    version = acme.models.resolve("models:/lm-docs@prod")
    assert version.name == registered and version.format == "hf_transformers"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "loss_curve.png"} <= {f["path"] for f in version.files}
    lineage = acme.models.lineage("lm-docs", version.version)
    names = {n.name for n in lineage.nodes}
    assert {job.name, corpus, version.name} <= names
    assert version.metrics["loss"] == pytest.approx(done.metrics["loss"])


def test_a_preempted_run_checkpoints_and_its_loss_curve_continues_where_it_stopped(tenant_clients, corpus):
    acme = tenant_clients["acme"]
    spec = {**_spec(corpus, steps=200, log_every=5), "priority_class": "low", "preemptible": True,
            "resources": {"gpus": 1, "gpu_types": ["V100"]}}
    low = acme.jobs.submit(spec)
    wait_for(lambda: any(p.step >= 20 for p in acme.jobs.metrics(low.name)), 180, "the trainer to make progress")
    high = acme.jobs.submit({"priority_class": "high", "resources": {"gpus": 2, "gpu_types": ["V100"]},
                             "command": {"argv": ["true"]}})
    assert acme.jobs.wait(high.name, timeout=180).state == "succeeded"
    low = acme.jobs.wait(low.name, timeout=420)
    assert low.state == "succeeded" and low.preemptions == 1 and low.retries == 0, low.message
    logs = "\n".join(acme.jobs.logs(low.name))
    stopped = int(re.search(r"stopped at step (\d+); checkpoint saved", logs).group(1))
    assert stopped >= 20 and f"resumed at step {stopped}" in logs
    steps = [p.step for p in acme.jobs.metrics(low.name) if p.key == "loss"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 200  # no step twice
    assert any(s > stopped for s in steps)


def test_a_killed_worker_restarts_the_job_from_its_last_checkpoint(tenant_clients, corpus):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({**_spec(corpus, steps=400, log_every=5), "max_retries": 1})
    wait_for(lambda: any(p.step >= 15 for p in acme.jobs.metrics(job.name)), 180, "progress past a checkpoint")
    pid = int(re.search(r"\(pid (\d+),", "\n".join(acme.jobs.logs(job.name))).group(1))
    os.kill(pid, signal.SIGKILL)
    done = acme.jobs.wait(job.name, timeout=420)
    assert done.state == "succeeded" and done.retries == 1 and done.attempt == 2, done.message
    logs = "\n".join(acme.jobs.logs(done.name))
    resumed = int(re.search(r"resumed at step (\d+)", logs).group(1))
    assert resumed >= 5 and resumed % 5 == 0  # a periodic checkpoint, not step 0


def test_a_registered_model_is_fine_tuned_with_its_own_tokenizer(tenant_clients, corpus):
    acme = tenant_clients["acme"]
    base = acme.jobs.submit({**_spec(corpus, steps=6), "trainer": {
        **_spec(corpus, steps=6)["trainer"], "register_model": {"model": "lm-base", "alias": "base"}}})
    assert acme.jobs.wait(base.name, timeout=300).state == "succeeded"
    wait_for(lambda: acme.jobs.get(base.name).registered_model_version, 60, "the base model's registration")
    spec = _spec(corpus, steps=4, lr=1e-3)
    spec["trainer"]["base_model"] = "models:/lm-base@base"
    tuned = acme.jobs.submit(spec)
    assert tuned.spec["trainer"]["base_model_version"] == acme.models.resolve("models:/lm-base@base").name
    done = acme.jobs.wait(tuned.name, timeout=300)
    assert done.state == "succeeded", (done.message, done.last_log_lines)
    logs = "\n".join(acme.jobs.logs(done.name))
    assert "fine-tuning tenants/acme/models/lm-base/versions/1" in logs
    # It continued from the base's weights: its first loss is the base's last, not a fresh model's.
    first = min((p for p in acme.jobs.metrics(done.name) if p.key == "loss"), key=lambda p: p.step).value
    fresh = min((p for p in acme.jobs.metrics(base.name) if p.key == "loss"), key=lambda p: p.step).value
    assert first < fresh
