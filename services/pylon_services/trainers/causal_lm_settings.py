"""The ``causal-lm`` trainer's settings as the trainer reads them: a job's ``trainer.config``
(checked at submit by ``causal_lm_config.config_violations``) with every default filled in by
``causal_lm_config.resolve``, where the defaults and presets live.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pylon_services.trainers.causal_lm_config import resolve

DEFAULT_CHECKPOINT_EVERY = 100  # steps, when the job sets no checkpoint_every_steps


@dataclass(frozen=True)
class Settings:
    preset: str
    model: Mapping[str, Any]  # the full architecture: the preset's, with the config's overrides
    seq_len: int
    batch_size: int  # sequences per worker per micro-batch
    grad_accum: int
    steps: int
    lr: float
    min_lr_ratio: float
    warmup: int
    weight_decay: float
    grad_clip: float  # 0: no clipping
    eval_every: int  # 0: only at the end
    eval_batches: int
    eval_fraction: float  # windows of each shard held out for evaluation
    log_every: int
    seed: int
    dtype: str  # "auto": bfloat16 autocast on CUDA, float32 on CPU
    compile: str | bool  # "auto": torch.compile on CUDA
    device: str
    checkpoint_every_minutes: float
    keep_checkpoints: int
    tokenizer: str  # the tokenization to use when a dataset version has several
    max_new_tokens_sample: int  # a greedy sample from the trained model, logged at the end
    # From the job spec, not the config: the job's checkpoint_every_steps (0: the default).
    checkpoint_every_steps: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, checkpoint_every_steps: int = 0) -> Settings:
        values = resolve(config)
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "eval_fraction", "checkpoint_every_minutes"):
            values[name] = float(values[name])
        return cls(**values, checkpoint_every_steps=checkpoint_every_steps or DEFAULT_CHECKPOINT_EVERY)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = dict(self.model)
        return out
