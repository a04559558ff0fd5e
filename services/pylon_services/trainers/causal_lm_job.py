"""The ``causal-lm`` trainer as a job's workload: join the gang, build or load the model, read the
pinned token shards, train (``causal_lm.Trainer``), resume from and write checkpoints, and on
success write a Hugging Face model directory, a loss curve and metrics to the job's output.
Registering that output as a model version (``trainer.register_model``) is the scheduler
leader's part once the job has succeeded: it holds the platform's credentials, workers do not.

What the API pinned at submit (``trainer.token_data``: the dataset versions' tokenizations, and
``base_model_files``) is all this reads: a retried or resumed attempt trains on the same data.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pylon.data import ShardReader
from pylon_services.ml.device import resolve_device
from pylon_services.ml.hf import DEFAULT_CHAT_TEMPLATE, load_hf_model, write_hf_model
from pylon_services.ml.llama import Llama, generate, preset
from pylon_services.storage.base import ObjectStore
from pylon_services.trainers.causal_lm import Diverged, Hooks, Outcome, Trainer
from pylon_services.trainers.causal_lm_settings import Settings
from pylon_services.trainers.output import configure_threads, loss_curve_png
from pylon_services.workloads.contract import PREEMPTED_EXIT_CODE, WorkloadContext, WorkloadResult

log = logging.getLogger("pylon.trainer")
RENDEZVOUS_TIMEOUT_S = 300.0
# How long a collective may wait for a slow rank: the end-of-run barrier waits while rank 0
# writes and uploads the model (minutes for the 1b preset).
COLLECTIVE_TIMEOUT_S = 1800.0


def run(ctx: WorkloadContext) -> WorkloadResult:
    spec = ctx.workload
    s = Settings.from_config(dict(spec.get("config", {})), checkpoint_every_steps=ctx.checkpoint_every_steps)
    configure_threads()
    device = resolve_device(s.device)
    _join_gang(ctx, device)
    try:
        return _train(ctx, s, spec, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(ctx: WorkloadContext, s: Settings, spec: Mapping[str, Any], device: torch.device) -> WorkloadResult:
    index = combined_index(ctx.store, spec.get("token_data", []))
    model, tokenizer_json, chat_template = _model(ctx, s, spec, index)
    eos_id = int(index["eos_id"])
    trainer = Trainer(s, model, lambda state: _reader(ctx, s, index, "train", state),
                      _eval_batches(ctx, s, index), _hooks(ctx, s), rank=ctx.rank, world_size=ctx.world_size,
                      device=device)
    resumed = _resume(ctx, trainer)
    source = spec.get("base_model_version") or f"preset {s.preset}"
    ctx.log(f"causal-lm: {model.spec.num_params() / 1e6:.1f}M parameters ({source}), "
            f"{index['total_tokens']} tokens, {ctx.world_size} worker(s) x batch {s.batch_size} x {s.grad_accum} "
            f"x {s.seq_len} tokens, {s.steps} steps on {device}" + (f"; resumed at step {resumed}" if resumed else ""))
    try:
        outcome = trainer.run()
    except Diverged as exc:
        kept = _latest_step(ctx)
        return WorkloadResult(exit_code=1, error=f"{exc}; the last good checkpoint (step {kept}) is kept",
                              step=trainer.step, retryable=False)
    if outcome.stopped:
        ctx.log(f"stopped at step {outcome.step}; checkpoint saved for resume")
        return WorkloadResult(exit_code=PREEMPTED_EXIT_CODE, error="preempted", step=outcome.step)
    metrics = _final_metrics(outcome)
    out = ctx.output_prefix()
    if ctx.rank == 0:
        _write_output(ctx, s, trainer.model, tokenizer_json, chat_template, eos_id, outcome, metrics, out)
        if s.max_new_tokens_sample:
            _sample(ctx, trainer.model, tokenizer_json, eos_id, s.max_new_tokens_sample)
    if dist.is_initialized():
        dist.barrier()
    return WorkloadResult(exit_code=0, output_uri=out, step=outcome.step, metrics=metrics)


# -- the gang ---------------------------------------------------------------------------------------


def _join_gang(ctx: WorkloadContext, device: torch.device) -> None:
    """One process group over the job's workers at rank 0's address (none for one worker)."""
    if ctx.world_size == 1:
        return
    addr, port = ctx.rendezvous(RENDEZVOUS_TIMEOUT_S)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=ctx.rank, world_size=ctx.world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    ctx.log(f"rank {ctx.rank} joined the {backend} group of {ctx.world_size} at {addr}:{port}")


# -- data -------------------------------------------------------------------------------------------


def combined_index(store: ObjectStore, token_data: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One shard index over every pinned tokenization (shard names become full object keys)."""
    if not token_data:
        raise ValueError("the job has no tokenized dataset (trainer.token_data is empty)")
    merged: dict[str, Any] | None = None
    for part in token_data:
        index = json.loads(store.get(part["index_object_key"]))
        prefix = part["index_object_key"].rsplit("/", 1)[0] + "/"
        shards = [{**sh, "name": prefix + sh.get("name", f"shard-{sh['index']:06d}.bin")} for sh in index["shards"]]
        if merged is None:
            merged = {**index, "shards": shards}
            continue
        if index["dtype"] != merged["dtype"] or index["eos_id"] != merged["eos_id"]:
            raise ValueError(f"{part.get('dataset_version')} was tokenized differently from the job's other datasets")
        merged["shards"] += shards
        merged["total_tokens"] += index["total_tokens"]
    assert merged is not None
    return merged


def _reader(ctx: WorkloadContext, s: Settings, index: dict[str, Any], split: str,
            state: dict[str, Any] | None) -> ShardReader:
    # seq_len + 1 tokens per window: inputs are the first seq_len, targets the last seq_len.
    return ShardReader(ctx.store, "", seq_len=s.seq_len + 1, batch_size=s.batch_size, seed=s.seed, rank=ctx.rank,
                       world_size=ctx.world_size, layout="interleaved", holdout=s.eval_fraction, split=split,
                       shuffle=split == "train", output="torch", index=index, state=state)


def _eval_batches(ctx: WorkloadContext, s: Settings, index: dict[str, Any]) -> Any:
    """This rank's first ``eval_batches`` held-out batches, the same ones at every evaluation."""
    if s.eval_fraction <= 0:
        return None
    probe = _reader(ctx, s, index, "eval", None)
    if len(probe) == 0:
        ctx.log("causal-lm: too little data for a held-out split; no evaluation")
        return None

    def batches() -> Iterator[torch.Tensor]:
        for i, batch in enumerate(_reader(ctx, s, index, "eval", None)):
            if i >= min(s.eval_batches, len(probe)):
                return
            yield batch

    return batches


# -- model ------------------------------------------------------------------------------------------


def _model(ctx: WorkloadContext, s: Settings, spec: Mapping[str, Any], index: dict[str, Any]
           ) -> tuple[Llama, str, str]:
    """(model, tokenizer.json, chat template): the pinned base model's, or a fresh seeded preset."""
    files = spec.get("base_model_files") or {}
    if files:
        with tempfile.TemporaryDirectory(prefix="pylon-base-") as d:
            for path, key in files.items():
                os.makedirs(os.path.dirname(os.path.join(d, path)) or d, exist_ok=True)
                with open(os.path.join(d, path), "wb") as f:
                    f.write(ctx.store.get(key))
            model = load_hf_model(d)
            with open(os.path.join(d, "tokenizer.json")) as f:
                tokenizer_json = f.read()
            template = _chat_template(d)
        ctx.log(f"causal-lm: fine-tuning {spec.get('base_model_version')}; the config's architecture is ignored")
        return model, tokenizer_json, template
    tokenizer_json = ctx.store.get(spec["token_data"][0]["tokenizer_object_key"]).decode()
    llama = preset(s.preset, vocab_size=int(index["vocab_size"]), eos_token_id=int(index["eos_id"]), **dict(s.model))
    model = Llama(llama)
    model.reset_parameters(torch.Generator().manual_seed(s.seed))
    return model, tokenizer_json, DEFAULT_CHAT_TEMPLATE


def _chat_template(directory: str) -> str:
    try:
        with open(os.path.join(directory, "tokenizer_config.json")) as f:
            template = json.load(f).get("chat_template")
    except (OSError, ValueError):
        template = None
    return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE


# -- checkpoints ------------------------------------------------------------------------------------


def _hooks(ctx: WorkloadContext, s: Settings) -> Hooks:
    writer = ctx.checkpoints(keep=s.keep_checkpoints)
    last_save = [time.monotonic()]

    def save(step: int, files: dict[str, bytes], meta: dict[str, Any]) -> Any:
        last_save[0] = time.monotonic()
        return writer.save(step, files, meta=meta)

    def time_due() -> bool:
        minutes = s.checkpoint_every_minutes
        return minutes > 0 and time.monotonic() - last_save[0] >= minutes * 60

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if ctx.rank == 0:  # the gang's figures (every rank holds the same): reported once
            ctx.report_progress(step, total, metrics)

    return Hooks(log=ctx.log, stop_requested=ctx.stop_requested, save_checkpoint=save, checkpoint_due_by_time=time_due,
                 progress=progress)


def _resume(ctx: WorkloadContext, trainer: Trainer) -> int:
    """Restore the newest checkpoint every rank of the gang holds whole (its own part and rank 0's
    model and optimizer); returns its step (0: start fresh). Each rank proposes the newest it can
    read, the gang takes the smallest, and ranks that proposed more read that one instead."""
    limit: int | None = None
    while True:
        found = _readable(ctx, limit)
        step = found[0] if found else 0
        agreed = _gang_min(step)
        if agreed == 0:
            return 0
        if step == agreed:
            break
        limit = agreed
    assert found is not None
    trainer.restore(found[2], found[1])
    return agreed


def _readable(ctx: WorkloadContext, limit: int | None) -> tuple[int, dict[str, bytes], dict[str, bytes]] | None:
    """(step, own part, rank 0's part) of the newest checkpoint <= ``limit`` this rank can read."""
    while True:
        own = ctx.load_latest_checkpoint(at_most=limit)
        if own is None:
            return None
        if ctx.rank == 0:
            return own[0], own[1], own[1]
        shared = ctx.load_latest_checkpoint(rank=0, at_most=own[0])
        if shared is None:
            return None
        if shared[0] == own[0]:
            return own[0], own[1], shared[1]
        limit = shared[0]


def _gang_min(value: int) -> int:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _latest_step(ctx: WorkloadContext) -> int:
    latest = ctx.load_latest_checkpoint()
    return latest[0] if latest else 0


# -- output -----------------------------------------------------------------------------------------


def _final_metrics(outcome: Outcome) -> dict[str, float]:
    metrics = {"loss": outcome.loss, "steps": float(outcome.step), "tokens_per_s": outcome.tokens_per_s}
    if outcome.val_loss is not None:
        metrics["val_loss"] = outcome.val_loss
        metrics["val_ppl"] = float(torch.exp(torch.tensor(min(outcome.val_loss, 50.0))))
    return metrics


def _write_output(ctx: WorkloadContext, s: Settings, model: Llama, tokenizer_json: str, chat_template: str,
                  eos_id: int, outcome: Outcome, metrics: dict[str, float], out: str) -> None:
    """The Hugging Face directory, the loss curve and the metrics, under the job's output."""
    from tokenizers import Tokenizer

    eos_token = Tokenizer.from_str(tokenizer_json).id_to_token(eos_id)
    with tempfile.TemporaryDirectory(prefix="pylon-out-") as d:
        names = write_hf_model(d, model, tokenizer_json=tokenizer_json, eos_token=eos_token, chat_template=chat_template)
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                ctx.store.put(f"{out}/{name}", f.read())
    ctx.store.put(f"{out}/loss_curve.png", loss_curve_png(outcome.history, outcome.val_history))
    ctx.store.put(f"{out}/training_metrics.json", json.dumps(
        {"metrics": metrics, "history": outcome.history, "val_history": outcome.val_history,
         "settings": s.to_dict()}).encode())
    ctx.log(f"done: {outcome.step} steps, loss {outcome.loss:.4f}"
            + (f", val_loss {outcome.val_loss:.4f}" if outcome.val_loss is not None else "")
            + f", {outcome.tokens_per_s:.0f} tokens/s; Hugging Face model at {out}")


def _sample(ctx: WorkloadContext, model: Llama, tokenizer_json: str, eos_id: int, max_new: int) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    prompt = tok.encode("The ").ids
    ids = generate(model.eval(), prompt, max_new, eos_token_id=eos_id)
    ctx.log("sample: " + tok.decode(prompt + ids).replace("\n", " ")[:500])
