"""The ``causal-lm`` trainer's settings with their defaults (torch-free: the API imports it).

``Settings.from_config`` fills a job's ``trainer.config`` (checked at submit by
``causal_lm_config.config_violations``) with the defaults; the trainer reads only this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Settings:
    preset: str = "tiny"
    model: Mapping[str, Any] = field(default_factory=dict)  # overrides of the preset's architecture
    seq_len: int = 128
    batch_size: int = 8  # sequences per worker per micro-batch
    grad_accum: int = 1
    steps: int = 200
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0: no clipping
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 4
    eval_fraction: float = 0.05  # windows of each shard held out for evaluation
    log_every: int = 10
    seed: int = 0
    dtype: str = "auto"  # bfloat16 autocast on CUDA, float32 on CPU
    compile: str | bool = "auto"  # torch.compile on CUDA
    device: str = "auto"
    checkpoint_every_minutes: float = 0.0
    keep_checkpoints: int = 3
    tokenizer: str = ""  # the tokenization to use when a dataset version has several
    max_new_tokens_sample: int = 0  # a greedy sample from the trained model, logged at the end
    # From the job spec, not the config: the job's checkpoint_every_steps (0: the default below).
    checkpoint_every_steps: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, checkpoint_every_steps: int = 0) -> Settings:
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known and k != "checkpoint_every_steps"}
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "eval_fraction", "checkpoint_every_minutes"):
            if name in values:
                values[name] = float(values[name])
        every = checkpoint_every_steps or DEFAULT_CHECKPOINT_EVERY
        return cls(**values, checkpoint_every_steps=every)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = dict(self.model)
        return out


DEFAULT_CHECKPOINT_EVERY = 100  # steps, when the job sets no checkpoint_every_steps
