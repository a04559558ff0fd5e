"""checkpoint_every_steps: the causal-lm trainer's periodic checkpoints resume exactly, the job's
checkpoint layout always names one whole checkpoint as the latest, and the SDK helpers user
commands call read the setting the scheduler passes them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import pylon.train as pt
from pylon_services.common.errors import InvalidArgument
from pylon_services.ml.llama import Llama, preset
from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.spec import Command, JobSpec, validate_spec
from pylon_services.scheduler.worker.context import WorkerContext
from pylon_services.storage.local import LocalObjectStore
from pylon_services.trainers.causal_lm import Hooks, Trainer
from pylon_services.trainers.causal_lm_settings import Settings as TrainSettings

VOCAB = 64
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 64}


class Batches:
    """Seeded token batches whose position a checkpoint records (what the shard reader does)."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.pos = state["pos"] if state else 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            self.pos += 1
            yield torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(self.pos))

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one thread (the machine's cores are shared), then restore torch's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trainer(every: int, saved: dict[int, dict[str, bytes]]) -> Trainer:
    """A causal-lm trainer of a tiny seeded model on CPU, its checkpoints kept in ``saved``."""
    torch.manual_seed(0)
    s = TrainSettings.from_config({"model": TINY, "seq_len": 16, "batch_size": 4, "steps": 30, "warmup": 5,
                                   "lr": 3e-3, "device": "cpu"})
    model = Llama(preset("tiny", vocab_size=VOCAB, **TINY))
    model.reset_parameters(torch.Generator().manual_seed(0))
    hooks = Hooks(log=lambda line: None, save_checkpoint=lambda step, files, meta: saved.__setitem__(step, files))
    return Trainer(dataclasses.replace(s, checkpoint_every_steps=every), model, Batches, None, hooks)


def test_periodic_checkpoints_resume_to_the_same_model_as_an_uninterrupted_run(one_thread: None) -> None:
    saved: dict[int, dict[str, bytes]] = {}
    whole = _trainer(10, saved)
    assert whole.run().step == 30
    assert sorted(saved) == [10, 20]  # not at the last step: the run's own output is that one
    resumed = _trainer(10, {})
    resumed.restore(saved[20], saved[20])
    assert resumed.step == 20 and resumed.run().step == 30
    for (name, x), (_, y) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_no_periodic_checkpoint_when_every_is_zero(one_thread: None) -> None:
    saved: dict[int, dict[str, bytes]] = {}
    assert _trainer(0, saved).run().step == 30
    assert saved == {}


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
