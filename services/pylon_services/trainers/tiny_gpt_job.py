"""The ``tiny-gpt`` trainer as a job's workload: reads its dataset versions from the object store,
resumes from the job's checkpoint if an earlier attempt left one, reports metrics and
checkpoints through the worker's context, and on preemption saves its state and exits with
``PREEMPTED_EXIT_CODE`` so the scheduler requeues it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pylon_services.common.layout import read_dataset_version
from pylon_services.ml.checkpoint import load_trainer_state
from pylon_services.storage.base import ObjectStore
from pylon_services.trainers.tiny_gpt import train
from pylon_services.trainers.tiny_gpt_config import TrainConfig
from pylon_services.workloads.contract import PREEMPTED_EXIT_CODE, WorkloadContext, WorkloadResult

# The periodic checkpoint when the job's checkpoint_every_steps is 0.
DEFAULT_CHECKPOINT_EVERY = 100


def read_corpus(store: ObjectStore, tenant: str, names: Sequence[str]) -> tuple[bytes, list[str]]:
    """The cleaned text of the named dataset versions, joined, and their digests."""
    parts, digests = [], []
    for name in names:
        _, t, _, dataset, _, version = name.split("/")
        if t not in (tenant, "-"):
            raise ValueError(f"dataset {name} is not in tenant {tenant}")
        manifest = read_dataset_version(store, tenant, dataset, version)
        digests.append(manifest["digest"])
        parts.extend(store.get(f["object_key"]) for f in manifest["files"])
    return b"\n".join(parts), digests


def run(ctx: WorkloadContext) -> WorkloadResult:
    spec = ctx.workload
    cfg = TrainConfig.from_dict(dict(spec.get("config", {})))
    corpus, digests = read_corpus(ctx.store, ctx.tenant, spec.get("datasets", []))
    ckpt = ctx.load_checkpoint()
    base = {path: ctx.store.get(key) for path, key in spec.get("base_model_files", {}).items()}
    every = ctx.checkpoint_every_steps or DEFAULT_CHECKPOINT_EVERY
    ctx.log(f"training tiny-gpt on {len(corpus)} bytes from {len(digests)} dataset version(s): "
            f"{cfg.steps} steps, batch {cfg.batch_size}, block {cfg.block_size}, checkpoint every {every} steps"
            + (f"; fine-tuning {spec['base_model_version']}" if base else "")
            + (" (resuming from checkpoint)" if ckpt else ""))
    if ckpt:
        ctx.log(f"pylon: resuming at step {load_trainer_state(ckpt)['step']}")

    def on_checkpoint(step: int, files: dict[str, bytes]) -> None:
        ctx.save_checkpoint(step, files)
        ctx.log(f"pylon: checkpoint of step {step} saved")

    def on_metrics(m: dict[str, Any]) -> None:
        ctx.metrics(int(m["step"]), {k: float(v) for k, v in m.items() if k != "step"})
        ctx.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))

    result = train(corpus, cfg, on_metrics=on_metrics, should_stop=ctx.stop_requested, resume_from=ckpt or None,
                   init_from=base or None, checkpoint_every=every, on_checkpoint=on_checkpoint)
    if result.stopped_early:
        ctx.save_checkpoint(result.steps_done, result.files)
        ctx.log(f"stopped at step {result.steps_done}; checkpoint saved for resume")
        return WorkloadResult(exit_code=PREEMPTED_EXIT_CODE, error="preempted", step=result.steps_done)
    out = ctx.output_prefix()
    for name, data in result.files.items():
        ctx.store.put(f"{out}/{name}", data)
    ctx.log(f"done: {result.steps_done} steps, final loss {result.final_loss:.4f}, "
            f"{result.tokens_per_s:.0f} tokens/s; checkpoint at {out}")
    return WorkloadResult(exit_code=0, output_uri=out, step=result.steps_done,
                          metrics={"loss": result.final_loss, "steps": float(result.steps_done),
                                   "tokens_per_s": result.tokens_per_s})
