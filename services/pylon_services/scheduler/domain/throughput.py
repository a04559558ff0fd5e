"""The throughput table: steps per second of a job type on one worker of a GPU type.

Seeded from profiles (Gavel's ``simulation_throughputs.json`` layout) and refined from the step
rates running jobs report, with an exponentially weighted moving average so one noisy report
does not swing placement. The class is pure and round-trips through a plain dict, so the live
service can persist it in Redis and the simulator can load it from a file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ALPHA = 0.3


def gavel_job_type(name: str, scale_factor: int) -> str:
    """The table key of a Gavel job type at a scale factor (1 keeps the bare name)."""
    return name if scale_factor == 1 else f"{name} x{scale_factor}"


@dataclass
class ThroughputTable:
    """``(job_type, gpu_type) -> steps/s per worker``; unknown pairs answer ``None``.

    ``default_rate`` answers for job types never profiled (a CPU-agnostic 1 step/s lets a
    trace whose work is in seconds, like Alibaba's, run type-agnostically).
    """

    rates: dict[tuple[str, str], float] = field(default_factory=dict)
    alpha: float = DEFAULT_ALPHA
    default_rate: float | None = None

    def rate(self, job_type: str, gpu_type: str) -> float | None:
        """Steps/s of one worker of ``job_type`` on ``gpu_type``, or None when unknown."""
        r = self.rates.get((job_type, gpu_type))
        return self.default_rate if r is None else r

    def set(self, job_type: str, gpu_type: str, rate: float) -> None:
        """Seed or overwrite one entry (profiles); ``rate`` must be positive."""
        if not rate > 0:
            raise ValueError(f"throughput of {job_type!r} on {gpu_type!r} must be positive, got {rate!r}")
        self.rates[(job_type, gpu_type)] = float(rate)

    def observe(self, job_type: str, gpu_type: str, steps_per_s: float) -> float:
        """Fold a reported per-worker step rate into the table (EWMA); returns the new value.

        A first report for an unknown pair is taken as is; non-positive reports are ignored
        (a stalled job says nothing about the hardware).
        """
        old = self.rates.get((job_type, gpu_type))
        if not steps_per_s > 0:
            return old if old is not None else 0.0
        new = steps_per_s if old is None else (1 - self.alpha) * old + self.alpha * steps_per_s
        self.rates[(job_type, gpu_type)] = new
        return new

    def job_types(self) -> list[str]:
        return sorted({j for j, _ in self.rates})

    def gpu_types(self) -> list[str]:
        return sorted({t for _, t in self.rates})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form: ``{"alpha":..., "rates": {job_type: {gpu_type: rate}}}``."""
        nested: dict[str, dict[str, float]] = {}
        for (j, t), r in sorted(self.rates.items()):
            nested.setdefault(j, {})[t] = r
        return {"alpha": self.alpha, "default_rate": self.default_rate, "rates": nested}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThroughputTable:
        table = cls(alpha=float(d.get("alpha", DEFAULT_ALPHA)), default_rate=d.get("default_rate"))
        for j, per_type in d.get("rates", {}).items():
            for t, r in per_type.items():
                table.set(j, t, float(r))
        return table

    @classmethod
    def from_gavel(cls, data: dict[str, Any], *, include_unconsolidated: bool = False) -> ThroughputTable:
        """Load Gavel's ``simulation_throughputs.json``: ``d[gpu]["('<type>', <scale>)"]["null"]``
        is the isolated steps/s of the whole job; we store it per worker (divided by scale)."""
        table = cls()
        for gpu, entries in data.items():
            if gpu.endswith("_unconsolidated") and not include_unconsolidated:
                continue
            for key, partners in entries.items():
                name, scale = _parse_gavel_key(key)
                rate = partners.get("null") if isinstance(partners, dict) else None
                if rate and rate > 0:
                    table.set(gavel_job_type(name, scale), gpu, float(rate) / scale)
        return table


def _parse_gavel_key(key: str) -> tuple[str, int]:
    """``"('ResNet-18 (batch size 16)', 2)"`` -> ``("ResNet-18 (batch size 16)", 2)``."""
    try:
        name, scale = ast.literal_eval(key)
        return str(name), int(scale)
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"not a Gavel job-type key: {key!r}") from e
