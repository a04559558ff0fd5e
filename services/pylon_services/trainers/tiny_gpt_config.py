"""Settings of the tiny byte-level GPT trainer, validated without torch.

The API checks a job's trainer config at submit with ``TrainConfig.from_dict`` (through the
workload registry), so this module must not import torch: the API process never loads it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pylon_services.ml.gpt import GPTConfig


class InvalidTrainConfig(ValueError):
    """Bad training settings; ``violations`` lists ``(field, description)`` for each one."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("invalid TrainConfig: " + "; ".join(f"{f}: {d}" for f, d in violations))


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; validated on construction."""

    steps: int = 300
    batch_size: int = 16
    block_size: int = 128
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.1
    seed: int = 0
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    eval_every: int = 50
    device: str = "auto"
    log_every: int = 10
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        violations = _violations(self)
        if violations:
            raise InvalidTrainConfig(violations)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from user input (e.g. a job spec); raises InvalidTrainConfig on any bad value."""
        if not isinstance(data, dict):
            raise InvalidTrainConfig([("config", "must be a mapping of field -> value")])
        known = {f.name: f for f in fields(cls)}
        violations = [(k, "unknown field") for k in sorted(set(data) - set(known))]
        for name, value in data.items():
            if name in known and not _type_ok(value, known[name].type):
                violations.append((name, f"must be {known[name].type}, got {value!r}"))
        if violations:
            raise InvalidTrainConfig(violations)
        values: dict[str, Any] = {
            k: float(v) if known[k].type == "float" else v for k, v in data.items()
        }
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    def model_config(self) -> GPTConfig:
        """The GPT shape these settings train (imports torch: workers only)."""
        from pylon_services.ml.gpt import GPTConfig

        return GPTConfig(
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
        )


def _type_ok(value: Any, type_name: Any) -> bool:
    if isinstance(value, bool):
        return False
    if type_name == "int":
        return isinstance(value, int)
    if type_name == "float":
        return isinstance(value, (int, float))
    return isinstance(value, str)


def _violations(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Every rule ``cfg`` breaks, so the user can fix them all in one go."""
    out: list[tuple[str, str]] = []
    for name in ("steps", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "log_every"):
        value = getattr(cfg, name)
        if not _type_ok(value, "int") or value < 1:
            out.append((name, f"must be an integer >= 1, got {value!r}"))
    for name in ("warmup", "seed", "eval_every"):
        value = getattr(cfg, name)
        if not _type_ok(value, "int") or value < 0:
            out.append((name, f"must be an integer >= 0, got {value!r}"))
    for name, low, high in (
        ("lr", 0.0, 1.0),
        ("weight_decay", 0.0, 1.0),
        ("grad_clip", 0.0, math.inf),
        ("min_lr_ratio", 0.0, 1.0),
    ):
        value = getattr(cfg, name)
        ok = _type_ok(value, "float") and math.isfinite(value) and low <= value <= high
        if not ok or (name == "lr" and value == 0):
            bound = "> 0" if name == "lr" else f">= {low}"
            out.append((name, f"must be a finite number {bound} and <= {high}, got {value!r}"))
    if not out and cfg.n_embd % cfg.n_head:
        out.append(("n_embd", f"must be divisible by n_head ({cfg.n_head}), got {cfg.n_embd}"))
    if not out and cfg.warmup > cfg.steps:
        out.append(("warmup", f"must be <= steps ({cfg.steps}), got {cfg.warmup}"))
    if not out and cfg.seed >= 2**63:
        out.append(("seed", "must be < 2**63"))
    if not isinstance(cfg.device, str) or not _device_name_ok(cfg.device):
        out.append(("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {cfg.device!r}"))
    return out


def _device_name_ok(name: str) -> bool:
    head, _, index = name.partition(":")
    if head in ("auto", "cpu"):
        return not index
    return head == "cuda" and (not index or index.isdigit())




def config_violations(config: Any) -> list[tuple[str, str]]:
    """Every problem of a job's trainer config as ``(field, description)``; [] when valid."""
    try:
        TrainConfig.from_dict(config)
    except InvalidTrainConfig as e:
        return list(e.violations)
    return []
