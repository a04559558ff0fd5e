"""The ``causal-lm`` trainer's loop: a Llama-architecture model on token shards, data-parallel.

One ``Trainer`` runs per worker of the job's gang. Ranks join one ``torch.distributed`` group
(gloo on CPU, NCCL on GPU) at the address rank 0 publishes (``WorkloadContext.rendezvous``) and
train with DDP; each reads its own interleaved slice of the shards (``ShardReader(layout=
"interleaved")``), so batch k of the gang holds the windows batch k of a 1-worker run of the same
global batch holds, and N workers train what one worker would.

Exact resume: a checkpoint holds the weights, AdamW's state and the step (the learning rate is a
function of the step) from rank 0, and every rank's reader position and RNG states; a resumed
run reads the next windows and computes what the uninterrupted run would have. Once per step the
ranks all-reduce one small tensor (the loss, a stop flag and a checkpoint flag) so all of them
agree on the loss, on stopping for a preemption and on when a time-based checkpoint is due.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch.nn import functional as F

from pylon_services.ml.device import resolve_device
from pylon_services.ml.llama import Llama, LlamaSpec
from pylon_services.ml.perf import mfu, peak_flops
from pylon_services.trainers.causal_lm_settings import Settings

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer.json"
RANK_FILE = "rank_state.pt"
LOSS_HISTORY = 10_000  # (step, loss) points kept for the loss curve


class Diverged(RuntimeError):
    """The loss became NaN or infinite: training cannot continue from this state."""


@dataclass
class Hooks:
    """What the loop needs from its surroundings (the job's worker context, or a test's)."""

    log: Callable[[str], None]
    stop_requested: Callable[[], bool] = lambda: False
    progress: Callable[[int, int, dict[str, float]], None] = lambda step, total, metrics: None
    # (step, files, meta) -> a future done once stored; None: no checkpoints.
    save_checkpoint: Callable[[int, dict[str, bytes], dict[str, Any]], Any] | None = None
    checkpoint_due_by_time: Callable[[], bool] = lambda: False


@dataclass
class Outcome:
    """How ``Trainer.run`` ended."""

    step: int
    stopped: bool
    loss: float
    val_loss: float | None
    tokens_per_s: float
    history: list[tuple[int, float]] = field(default_factory=list)
    val_history: list[tuple[int, float]] = field(default_factory=list)


def lr_at(step: int, s: Settings) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio``."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
    floor = s.lr * s.min_lr_ratio
    return floor + (s.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """One rank's training run; ``run`` trains to ``settings.steps`` or until stopped."""

    def __init__(self, settings: Settings, model: Llama, train_batches: Callable[[dict[str, Any] | None], Any],
                 eval_batches: Callable[[], Iterator[torch.Tensor]] | None, hooks: Hooks, *, rank: int = 0,
                 world_size: int = 1, device: torch.device | None = None) -> None:
        """``train_batches(state)`` makes this rank's reader (at a saved position when ``state``
        is given): an iterable of (batch, seq_len + 1) token tensors with ``state_dict()``;
        ``eval_batches()`` yields the held-out batches of this rank (None: no evaluation)."""
        self.s, self.hooks, self.rank, self.world = settings, hooks, rank, world_size
        self.device = device or resolve_device(settings.device)
        self.spec: LlamaSpec = model.spec
        self.model = model.to(self.device)
        self.train_batches, self.eval_batches = train_batches, eval_batches
        self.dtype = _compute_dtype(settings.dtype, self.device)
        self.optimizer = _adamw(self.model, settings, self.device)
        self.step = 0
        self.reader: Any = None
        self.history: list[tuple[int, float]] = []
        self.val_history: list[tuple[int, float]] = []
        self.tokens_per_step = settings.batch_size * settings.grad_accum * settings.seq_len * world_size
        self.peak = peak_flops(torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu")

    # -- state ----------------------------------------------------------------------------------

    def checkpoint_files(self) -> dict[str, bytes]:
        """This rank's part of a checkpoint (rank 0 adds the model, optimizer and step)."""
        rank_state = {"torch_rng": torch.get_rng_state(), "reader": json.dumps(self.reader.state_dict())}
        if self.device.type == "cuda":
            rank_state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        files = {RANK_FILE: _torch_bytes(rank_state)}
        if self.rank == 0:
            files[MODEL_FILE] = save_safetensors({k: v.detach().to("cpu", torch.float32).contiguous()
                                                  for k, v in self.model.state_dict().items()})
            files[OPTIMIZER_FILE] = _torch_bytes(self.optimizer.state_dict())
            files[TRAINER_FILE] = json.dumps({"step": self.step, "history": self.history[-LOSS_HISTORY:],
                                              "val_history": self.val_history, "settings": self.s.to_dict()}).encode()
        return files

    def restore(self, shared: dict[str, bytes], own: dict[str, bytes]) -> None:
        """Continue from a checkpoint: ``shared`` is rank 0's part, ``own`` this rank's."""
        state = json.loads(shared[TRAINER_FILE])
        self.model.load_state_dict(load_safetensors(shared[MODEL_FILE]), strict=True)
        self.optimizer.load_state_dict(torch.load(io.BytesIO(shared[OPTIMIZER_FILE]), map_location=self.device,
                                                  weights_only=True))
        self.step = int(state["step"])
        self.history = [tuple(x) for x in state.get("history", [])]  # type: ignore[misc]
        self.val_history = [tuple(x) for x in state.get("val_history", [])]  # type: ignore[misc]
        mine = torch.load(io.BytesIO(own[RANK_FILE]), weights_only=True)
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.reader = self.train_batches(json.loads(mine["reader"]))

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        if self.reader is None:
            self.reader = self.train_batches(None)
        net = self._wrap()
        batches = iter(self.reader)
        window: list[float] = []
        t_window, tokens_window = time.perf_counter(), 0
        t_start, steps_run = time.perf_counter(), 0
        stopped, pending = False, None
        val_loss = self.val_history[-1][1] if self.val_history else None
        every = self.s.checkpoint_every_steps
        while self.step < self.s.steps:
            loss_sum, grad_norm, batches = self._train_step(net, batches)
            stop, time_due = self.hooks.stop_requested(), self.hooks.checkpoint_due_by_time()
            loss, stop, time_due = self._agree(loss_sum, stop, time_due)
            if not math.isfinite(loss):
                raise Diverged(f"the loss became {loss} at step {self.step + 1}")
            self.step += 1
            steps_run += 1
            window.append(loss)
            self.history.append((self.step, loss))
            tokens_window += self.tokens_per_step
            last = self.step == self.s.steps
            if self.eval_batches is not None and self.s.eval_every and (self.step % self.s.eval_every == 0 or last):
                val_loss = self.evaluate(net)
                self.val_history.append((self.step, val_loss))
            if self.step % self.s.log_every == 0 or last or stop:
                now = time.perf_counter()
                self._report(window, grad_norm, tokens_window / max(now - t_window, 1e-9), val_loss,
                             steps_run / max(now - t_start, 1e-9))
                window, t_window, tokens_window = [], now, 0
            if stop:
                stopped = True
                break
            if self.hooks.save_checkpoint and not last and ((every and self.step % every == 0) or time_due):
                pending = self.hooks.save_checkpoint(self.step, self.checkpoint_files(), {"loss": loss})
        if stopped and self.hooks.save_checkpoint:
            pending = self.hooks.save_checkpoint(self.step, self.checkpoint_files(), {"preempted": True})
        if pending is not None:
            pending.result()
        elapsed = time.perf_counter() - t_start
        final = self.history[-1][1] if self.history else math.nan
        return Outcome(self.step, stopped, final, val_loss, steps_run * self.tokens_per_step / max(elapsed, 1e-9),
                       self.history, self.val_history)

    def _wrap(self) -> torch.nn.Module:
        net: torch.nn.Module = self.model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if _compile_enabled(self.s.compile, self.device):
            net = torch.compile(net)  # type: ignore[assignment]
        return net

    def _train_step(self, net: torch.nn.Module, batches: Iterator[torch.Tensor]
                    ) -> tuple[torch.Tensor, float, Iterator[torch.Tensor]]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the summed loss."""
        lr = lr_at(self.step, self.s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(self.s.grad_accum):
            batch, batches = _next(batches, self.reader)
            batch = batch.to(self.device, non_blocking=True)
            sync = micro == self.s.grad_accum - 1 or self.world == 1
            with (contextlib.nullcontext() if sync else net.no_sync()):  # type: ignore[operator]
                loss = self._loss(net, batch) / self.s.grad_accum
                loss.backward()  # type: ignore[no-untyped-call]
            total += loss.detach()
        clip = self.s.grad_clip if self.s.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm, batches

    def _loss(self, net: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = net(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))

    def _agree(self, loss_sum: torch.Tensor, stop: bool, time_due: bool) -> tuple[float, bool, bool]:
        """The gang's mean loss, and whether any rank wants to stop or checkpoint now."""
        if self.world == 1:
            return float(loss_sum), stop, time_due
        flags = torch.stack([loss_sum.float(), torch.tensor(float(stop), device=self.device),
                             torch.tensor(float(time_due), device=self.device)])
        dist.all_reduce(flags)
        return float(flags[0]) / self.world, bool(flags[1] > 0), bool(flags[2] > 0)

    @torch.no_grad()
    def evaluate(self, net: torch.nn.Module) -> float:
        """Mean loss over this rank's held-out batches, averaged over the gang."""
        assert self.eval_batches is not None
        self.model.eval()
        total, count = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for batch in self.eval_batches():
            total += self._loss(self.model, batch.to(self.device))
            count += 1
        self.model.train()
        if self.world > 1:
            pair = torch.stack([total, count])
            dist.all_reduce(pair)
            total, count = pair[0], pair[1]
        return float(total / count.clamp(min=1))

    def _report(self, window: list[float], grad_norm: float, tokens_per_s: float, val_loss: float | None,
                steps_per_s: float) -> None:
        metrics = {"loss": sum(window) / len(window), "lr": lr_at(self.step - 1, self.s), "grad_norm": grad_norm,
                   "tokens_per_s": tokens_per_s, "eta_s": (self.s.steps - self.step) / max(steps_per_s, 1e-9)}
        util = mfu(self.spec.flops_per_token(self.s.seq_len), tokens_per_s / self.world, self.peak)
        if util is not None:
            metrics["mfu"] = util
        if val_loss is not None:
            metrics["val_loss"] = val_loss
            metrics["val_ppl"] = math.exp(min(val_loss, 50.0))
        self.hooks.progress(self.step, self.s.steps, metrics)
        if self.rank == 0:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            self.hooks.log(f"step {self.step}/{self.s.steps} {shown}")


def _next(batches: Iterator[torch.Tensor], reader: Any) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    """The next batch; an epoch's end starts the reader's next epoch."""
    try:
        return next(batches), batches
    except StopIteration:
        batches = iter(reader)
        return next(batches), batches


def _adamw(model: Llama, s: Settings, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms), fused on CUDA."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def _compute_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "bfloat16" or (name == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _compile_enabled(setting: str | bool, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
