"""Canary rollouts of a deployment that follows an alias: a pure state machine.

When the alias moves to a new version, the deployment starts ``canary_replicas`` replicas of it
beside the stable ones and sends them ``canary_percent`` of its traffic. The canary is judged on
what the gateways saw of its requests since it started: once ``min_requests`` went to it and it
has served for ``bake_s``, it is promoted if its error rate and mean TTFT are within the
thresholds, else rolled back; a canary that errs past the threshold is rolled back without
waiting, and one that has no ready replica after ``start_timeout_s`` (a version whose replica
cannot start) too. A rolled-back version is not tried again until the alias moves elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pylon_services.common.errors import FieldViolation

HISTORY_KEPT = 20


@dataclass(frozen=True)
class RolloutPolicy:
    """How a deployment follows its alias; off unless ``follow_alias``."""

    follow_alias: bool = False
    canary_percent: float = 10.0
    canary_replicas: int = 1
    min_requests: int = 20
    max_error_rate: float = 0.05
    max_ttft_ms: float = 0.0  # 0 = latency is not judged
    bake_s: float = 30.0
    start_timeout_s: float = 600.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RolloutPolicy:
        if not d:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def policy_violations(prefix: str, p: RolloutPolicy, model_uri: str) -> list[FieldViolation]:
    """What is wrong with a policy, each violation naming ``{prefix}.{field}``."""
    if not p.follow_alias:
        return []
    bad: list[FieldViolation] = []
    if "@" not in model_uri:
        bad.append(FieldViolation(f"{prefix}.follow_alias", "needs a model_uri naming an alias (models:/name@alias)"))
    checks = (("canary_percent", p.canary_percent, 0.0, 100.0), ("canary_replicas", p.canary_replicas, 1, 16),
              ("min_requests", p.min_requests, 0, 1_000_000), ("max_error_rate", p.max_error_rate, 0.0, 1.0),
              ("max_ttft_ms", p.max_ttft_ms, 0.0, 600_000.0), ("bake_s", p.bake_s, 0.0, 86_400.0),
              ("start_timeout_s", p.start_timeout_s, 1.0, 86_400.0))
    for name, value, low, high in checks:
        if not (math.isfinite(value) and low <= value <= high):
            bad.append(FieldViolation(f"{prefix}.{name}", f"must be between {low:g} and {high:g}"))
    return bad


@dataclass(frozen=True)
class Canary:
    """The rollout in progress: the version on trial, when it started, and the counters of that
    version's requests at its start (the judgement counts only what came after)."""

    version: str
    start_time: float
    base_requests: int = 0
    base_errors: int = 0
    base_ttft_ms_sum: float = 0.0
    base_ttft_count: int = 0
    ready_time: float = 0.0  # when a canary replica first served; 0 until then


@dataclass(frozen=True)
class RolloutEvent:
    """One line of a deployment's rollout history."""

    time: float
    from_version: str
    to_version: str
    outcome: str  # "started", "promoted" or "rolled_back"
    reason: str


@dataclass(frozen=True)
class VersionCounters:
    """What the gateways counted of one version's requests (totals since they began counting)."""

    requests: int = 0
    errors: int = 0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0


Verdict = Literal["wait", "promote", "rollback"]


def judge(p: RolloutPolicy, c: Canary, counters: VersionCounters, now: float) -> tuple[Verdict, str]:
    """Whether the canary is promoted, rolled back, or needs more time, with the reason."""
    if not c.ready_time:
        if now - c.start_time > p.start_timeout_s:
            return "rollback", f"no canary replica served within {p.start_timeout_s:g}s"
        return "wait", "canary replicas starting"
    requests = counters.requests - c.base_requests
    errors = counters.errors - c.base_errors
    ttft_n = counters.ttft_count - c.base_ttft_count
    ttft = (counters.ttft_ms_sum - c.base_ttft_ms_sum) / ttft_n if ttft_n > 0 else 0.0
    rate = errors / requests if requests > 0 else 0.0
    enough = requests >= max(p.min_requests, 1)
    # Errors past the threshold end the trial early, once a handful confirm it is no accident.
    if requests >= min(max(p.min_requests, 1), 5) and rate > p.max_error_rate:
        return "rollback", f"error rate {rate:.0%} over {p.max_error_rate:.0%} ({errors}/{requests} requests)"
    if enough and p.max_ttft_ms and ttft > p.max_ttft_ms:
        return "rollback", f"mean TTFT {ttft:.0f} ms over {p.max_ttft_ms:.0f} ms ({requests} requests)"
    if enough and now - c.ready_time >= p.bake_s:
        return "promote", f"healthy: {errors}/{requests} errors, mean TTFT {ttft:.0f} ms over {now - c.ready_time:.0f}s"
    return "wait", f"{requests}/{p.min_requests} requests, {now - c.ready_time:.0f}/{p.bake_s:g}s"


def next_step(p: RolloutPolicy, stable: str, target: str, canary: Canary | None, rejected: str
              ) -> Literal["none", "start", "abandon"]:
    """What the alias now pointing at ``target`` asks of a deployment serving ``stable``:
    start a canary of it, abandon the canary of a version the alias left, or nothing."""
    if not p.follow_alias or not target:
        return "none"
    if canary is not None:
        return "abandon" if canary.version != target else "none"
    if target in (stable, rejected):
        return "none"
    return "start"


def canary_share(p: RolloutPolicy) -> float:
    """The fraction of requests a ready canary gets."""
    return max(0.0, min(1.0, p.canary_percent / 100.0))


def with_event(history: tuple[RolloutEvent, ...], event: RolloutEvent) -> tuple[RolloutEvent, ...]:
    """The history with ``event`` appended, the oldest dropped past ``HISTORY_KEPT``."""
    return (history + (event,))[-HISTORY_KEPT:]
