"""Train the tiny byte-level GPT on a corpus: the trainer Pylon's demo runs in a Ray worker.

Deterministic given ``seed``: the model is initialised from ``torch.manual_seed(seed)`` and each
step's batch is drawn from a generator seeded by ``(seed, step)``, so the data stream is a pure
function of the step number. That is what makes stop-and-resume exact: a resumed run restores
weights, AdamW state and the step, and then sees the very batches the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from pylon_services.ml.checkpoint import (
    CheckpointFiles,
    checkpoint_files,
    load_config,
    load_model,
    load_optimizer_state,
    load_trainer_state,
)
from pylon_services.ml.gpt import GPT, autocast, resolve_device
from pylon_services.trainers.output import configure_threads
from pylon_services.trainers.tiny_gpt_config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]

EVAL_BATCHES = 4
_STEP_SEED_STRIDE = 1_000_003  # a prime, so (seed, step) pairs map to distinct batch seeds

MetricsCallback = Callable[[dict[str, float]], None]  # step is an int
StopPredicate = Callable[[], bool]
CheckpointCallback = Callable[[int, CheckpointFiles], None]  # (step, files)


@dataclass
class TrainResult:
    """Outcome of ``train``: the checkpoint plus the figures a job report shows."""

    files: CheckpointFiles
    steps_done: int
    final_loss: float  # mean training loss over the last reporting window (nan if none ran)
    tokens_per_s: float
    stopped_early: bool
    final_val_loss: float | None = None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr*min_lr_ratio``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Batches:
    """Random (input, target) windows of a token tensor; batch ``k`` depends only on (seed, k)."""

    def __init__(self, data: torch.Tensor, cfg: TrainConfig, device: torch.device) -> None:
        self.data = data
        self.cfg = cfg
        self.device = device
        self.generator = torch.Generator()
        self.offsets = torch.arange(cfg.block_size + 1)

    def get(self, step: int, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``step`` (the same on every run with this seed)."""
        self.generator.manual_seed((self.cfg.seed * _STEP_SEED_STRIDE + step) % 2**63)
        n = batch_size or self.cfg.batch_size
        high = len(self.data) - self.cfg.block_size
        starts = torch.randint(0, high, (n,), generator=self.generator)
        windows = self.data[starts[:, None] + self.offsets].long()
        windows = windows.to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]


def _split(corpus: bytes, block_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train/validation split (last 10%), or no validation when the corpus is too short."""
    if len(corpus) < block_size + 1:
        raise ValueError(
            f"corpus has {len(corpus)} bytes; need at least block_size + 1 = {block_size + 1}"
        )
    data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8)
    cut = int(len(data) * 0.9)
    if cut < block_size + 1 or len(data) - cut < block_size + 1:
        return data, None
    return data[:cut], data[cut:]


def _loss(model: GPT, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    with autocast(device):
        logits, _ = model(x, use_cache=False)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def _evaluate(model: GPT, batches: _Batches, device: torch.device) -> float:
    """Mean loss over a fixed set of validation batches (same batches at every eval)."""
    model.eval()
    losses = [_loss(model, *batches.get(-1 - i), device) for i in range(EVAL_BATCHES)]
    model.train()
    return float(torch.stack(losses).mean())


def _make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, norms or positions' scale)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def _restore(
    cfg: TrainConfig, device: torch.device, resume_from: CheckpointFiles | None,
    init_from: CheckpointFiles | None = None,
) -> tuple[GPT, torch.optim.AdamW, dict[str, Any]]:
    """A fresh seeded model, the base model's weights (fine-tuning: fresh optimizer, step 0),
    or the checkpoint's model, optimizer and trainer state (resuming)."""
    if resume_from is None and init_from is not None:
        base_cfg = load_config(init_from)
        if base_cfg != cfg.model_config():
            raise ValueError(
                f"the base model has shape {base_cfg.to_dict()}, but the config asks for "
                f"{cfg.model_config().to_dict()}; fine-tuning keeps the base model's shape"
            )
        model, _ = load_model(init_from, device)
        return model, _make_optimizer(model, cfg, device), {"step": 0}
    if resume_from is None:
        # Seed the init without clobbering the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = GPT(cfg.model_config()).to(device)
        return model, _make_optimizer(model, cfg, device), {"step": 0}
    state = load_trainer_state(resume_from)
    saved_cfg = load_config(resume_from)
    if saved_cfg != cfg.model_config():
        raise ValueError(
            f"resume_from holds a model of shape {saved_cfg.to_dict()}, "
            f"but the config asks for {cfg.model_config().to_dict()}"
        )
    if state.get("seed") != cfg.seed:
        raise ValueError(f"resume_from was trained with seed {state.get('seed')}, not {cfg.seed}")
    model, _ = load_model(resume_from, device)
    optimizer = _make_optimizer(model, cfg, device)
    opt_state = load_optimizer_state(resume_from, device)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    return model, optimizer, state


def _train_step(
    model: GPT, optimizer: torch.optim.AdamW, batches: _Batches, step: int, cfg: TrainConfig
) -> torch.Tensor:
    """One optimizer step at the scheduled learning rate; returns the detached loss."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = batches.get(step)
    loss = _loss(model, x, y, batches.device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach()


def train(
    corpus: bytes,
    cfg: TrainConfig,
    *,
    on_metrics: MetricsCallback | None = None,
    should_stop: StopPredicate | None = None,
    resume_from: CheckpointFiles | None = None,
    init_from: CheckpointFiles | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    """Train (or continue training) the tiny GPT on ``corpus`` bytes up to ``cfg.steps``.

    ``on_metrics`` gets ``{step, loss, lr, tokens_per_s[, val_loss]}`` every ``log_every``
    steps and at the last one (``loss`` is the mean since the previous report).
    ``should_stop`` is polled before every step; when it returns True training stops and the
    result's checkpoint can be passed back as ``resume_from`` to carry on where it left off.
    ``init_from`` starts from a base model's weights (fine-tuning); a checkpoint of this same
    run (``resume_from``) takes precedence, so a preempted fine-tune resumes where it stopped.
    ``on_checkpoint(step, files)`` gets a full checkpoint (the same files as the result's) after
    every ``checkpoint_every``-th step before the last one, so a run that crashes can resume from
    the latest one instead of step 0 (0 = no periodic checkpoints).
    """
    configure_threads()
    device = resolve_device(cfg.device)
    train_data, val_data = _split(corpus, cfg.block_size)
    model, optimizer, state = _restore(cfg, device, resume_from, init_from)
    model.train()
    batches = _Batches(train_data, cfg, device)
    val_batches = _Batches(val_data if val_data is not None else train_data, cfg, device)
    loop = _Loop(cfg, on_metrics, state)
    step = int(state["step"])
    stopped = False
    while step < cfg.steps:
        if should_stop is not None and should_stop():
            stopped = True
            break
        loss = _train_step(model, optimizer, batches, step, cfg)
        step += 1
        loop.after_step(step, loss, lambda: _evaluate(model, val_batches, device))
        if on_checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0 and step < cfg.steps:
            on_checkpoint(step, checkpoint_files(model, model.config, _trainer_state(cfg, step, loop), optimizer))
    loop.finish(step)
    files = checkpoint_files(model, model.config, _trainer_state(cfg, step, loop), optimizer)
    return TrainResult(
        files=files,
        steps_done=step,
        final_loss=loop.last_loss,
        tokens_per_s=loop.tokens_per_s(),
        stopped_early=stopped,
        final_val_loss=loop.last_val_loss,
    )


def _trainer_state(cfg: TrainConfig, step: int, loop: _Loop) -> dict[str, Any]:
    """What ``trainer_state.json`` records: enough to resume and to report the run."""
    return {
        "step": step,
        "seed": cfg.seed,
        # Batch k is drawn from a generator seeded by (seed, k): the step is the data position.
        "data_position": {"sampler": "uniform-windows-seeded-per-step", "next_batch": step},
        "tokens_seen": step * cfg.batch_size * cfg.block_size,
        "loss": None if math.isnan(loop.last_loss) else loop.last_loss,
        "val_loss": loop.last_val_loss,
        "train_config": cfg.to_dict(),
    }


class _Loop:
    """Bookkeeping for ``train``: windowed loss, throughput, periodic metrics and evals."""

    def __init__(
        self, cfg: TrainConfig, on_metrics: MetricsCallback | None, state: dict[str, Any]
    ) -> None:
        self.cfg = cfg
        self.on_metrics = on_metrics
        self.tokens_per_step = cfg.batch_size * cfg.block_size
        saved_loss = state.get("loss")
        self.last_loss = math.nan if saved_loss is None else float(saved_loss)
        self.last_val_loss: float | None = state.get("val_loss")
        self.start = self.window_start = time.perf_counter()
        self.elapsed: float | None = None
        self.steps_run = 0
        self.window: list[torch.Tensor] = []

    def after_step(self, step: int, loss: torch.Tensor, evaluate: Callable[[], float]) -> None:
        """Record a finished step; report and evaluate when it is time to."""
        self.steps_run += 1
        self.window.append(loss)
        last = step == self.cfg.steps
        do_eval = self.cfg.eval_every > 0 and (step % self.cfg.eval_every == 0 or last)
        if step % self.cfg.log_every and not last and not do_eval:
            return
        # Reading the loss forces a device sync, so it only happens on reporting steps.
        # A window mean, not the last batch: one batch of a small corpus is a noisy estimate.
        mean_loss = float(torch.stack(self.window).mean())
        self.last_loss = mean_loss
        now = time.perf_counter()
        metrics = {
            "step": step,
            "loss": mean_loss,
            "lr": lr_at(step - 1, self.cfg),
            "tokens_per_s": len(self.window) * self.tokens_per_step / (now - self.window_start),
        }
        if do_eval:
            self.last_val_loss = evaluate()
            metrics["val_loss"] = self.last_val_loss
        self.window = []
        self.window_start = time.perf_counter()
        if self.on_metrics is not None:
            self.on_metrics(metrics)

    def finish(self, step: int) -> None:
        """Settle the loss of steps run since the last report (e.g. after a stop)."""
        if self.window:
            self.last_loss = float(torch.stack(self.window).mean())
            self.window = []
        self.elapsed = time.perf_counter() - self.start

    def tokens_per_s(self) -> float:
        """Training throughput of this call (0 when no step ran)."""
        elapsed = self.elapsed if self.elapsed is not None else time.perf_counter() - self.start
        return self.steps_run * self.tokens_per_step / elapsed if self.steps_run else 0.0
