"""checkpoint_every_steps: the built-in trainer's periodic checkpoints resume exactly, the job's
checkpoint layout always names one whole checkpoint as the latest, and the SDK helpers user
commands call read the setting the scheduler passes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pylon.train as pt
from pylon_services.common.errors import InvalidArgument
from pylon_services.ml.checkpoint import load_model, load_trainer_state
from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.spec import Command, JobSpec, validate_spec
from pylon_services.scheduler.worker.context import WorkerContext
from pylon_services.storage.local import LocalObjectStore
from pylon_services.trainers.tiny_gpt import TrainConfig, train

CORPUS = ("the quick brown fox jumps over the lazy dog.\n" * 80).encode()
TINY = {"batch_size": 4, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32}


def test_periodic_checkpoints_resume_to_the_same_model_as_an_uninterrupted_run():
    cfg = TrainConfig(steps=30, warmup=5, eval_every=0, device="cpu", **TINY)
    saved: dict[int, dict[str, bytes]] = {}
    whole = train(CORPUS, cfg, checkpoint_every=10, on_checkpoint=lambda step, files: saved.__setitem__(step, files))
    assert sorted(saved) == [10, 20]  # not at the last step: the run's own result is that one
    assert load_trainer_state(saved[20])["step"] == 20
    resumed = train(CORPUS, cfg, resume_from=saved[20])
    assert resumed.steps_done == 30
    a, _ = load_model(whole.files)
    b, _ = load_model(resumed.files)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_no_periodic_checkpoint_when_every_is_zero():
    cfg = TrainConfig(steps=12, warmup=2, eval_every=0, device="cpu", **TINY)
    calls: list[int] = []
    train(CORPUS, cfg, checkpoint_every=0, on_checkpoint=lambda step, _: calls.append(step))
    assert calls == []


def test_job_checkpoint_layout_keeps_the_newest_whole_checkpoints(tmp_path: Path):
    store = LocalObjectStore(str(tmp_path))
    job = Job(id="j1", tenant="acme", spec=JobSpec(Command(("true",))))
    ctx = WorkerContext(Settings(), job, attempt=1, store=store)  # checkpoints never touch Redis
    ctx.log = ctx.lines.append  # type: ignore[method-assign]
    assert ctx.load_checkpoint() == {} and ctx.load_latest_checkpoint() is None
    for step in (10, 20, 30, 40):
        ctx.save_checkpoint(step, {"model.safetensors": b"m%d" % step, "trainer_state.json": b"s%d" % step})
    assert ctx.load_checkpoint() == {"model.safetensors": b"m40", "trainer_state.json": b"s40"}
    assert ctx.load_latest_checkpoint() == (40, {"model.safetensors": b"m40", "trainer_state.json": b"s40"})
    keys = sorted(o.key for o in store.iter_all("tenants/acme/jobs/j1/checkpoint/"))
    assert all("step-000000000010" not in k for k in keys)  # beyond the newest 3: dropped
    assert "tenants/acme/jobs/j1/checkpoint/step-000000000040/manifest.json" in keys


def test_checkpoint_every_reads_the_int64_field_of_stored_specs():
    assert JobSpec.from_dict({"checkpoint_every_steps": "25", "command": {"argv": ["x"]}}).checkpoint_every_steps == 25
    assert JobSpec.from_dict({"command": {"argv": ["x"]}}).checkpoint_every_steps == 0


def test_negative_checkpoint_every_is_invalid_argument():
    with pytest.raises(InvalidArgument) as e:
        validate_spec(JobSpec(Command(("true",)), checkpoint_every_steps=-5))
    assert "spec.checkpoint_every_steps" in str(e.value)
    validate_spec(JobSpec(Command(("true",)), checkpoint_every_steps=5))


def test_sdk_helpers_follow_the_env_the_scheduler_sets(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("PYLON_CHECKPOINT_EVERY", raising=False)
    monkeypatch.delenv("PYLON_CHECKPOINT_SAVED_FILE", raising=False)
    assert pt.checkpoint_every() == 0 and pt.checkpoint_every(50) == 50
    assert not pt.should_checkpoint(10) and pt.should_checkpoint(100, default=50)
    assert pt.checkpoint_saved(3) is False  # outside a job: nothing to wait for
    monkeypatch.setenv("PYLON_CHECKPOINT_EVERY", "5")
    assert [s for s in range(0, 16) if pt.should_checkpoint(s)] == [5, 10, 15]
    mark = tmp_path / "saved"
    monkeypatch.setenv("PYLON_CHECKPOINT_SAVED_FILE", str(mark))
    (tmp_path / "saved.done").write_text("7")  # what the worker's uploader writes once uploaded
    assert pt.checkpoint_saved(7, timeout_s=2) is True and mark.read_text() == "7"
    assert pt.checkpoint_saved(8, timeout_s=0.2) is False  # never acknowledged
