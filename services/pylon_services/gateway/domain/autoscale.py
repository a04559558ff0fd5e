"""How many replicas a deployment wants, from its load: a pure policy the controller applies.

Like Knative's KPA (which KServe and AIBrix use): scale up at once to what the load asks for,
scale down only after the lower count has been enough for a whole ``scale_down_delay_s`` window
(the highest recommendation in the window wins, so a short lull does not drop a replica that
the next burst needs), and to zero only after ``scale_to_zero_after_s`` without a request.
Three signals, each a target per replica; the largest answer wins:

- queue depth: requests running or waiting on the replicas, plus requests the gateway holds
  because no replica is ready, over ``target_queue`` per replica;
- KV-cache use: the mean over ready replicas against ``target_kv_usage`` (the count grows in
  proportion, as Kubernetes' HPA does for a utilisation target);
- time to first token: the gateway's mean TTFT over the last window against ``target_ttft_ms``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pylon_services.common.errors import FieldViolation

MAX_REPLICAS = 16


@dataclass(frozen=True)
class AutoscalePolicy:
    """A deployment's autoscaling; ``max_replicas == 0`` turns it off (a fixed replica count)."""

    min_replicas: int = 1
    max_replicas: int = 0
    target_queue: float = 4.0  # requests running + waiting per replica
    target_kv_usage: float = 0.8  # 0 = not a signal
    target_ttft_ms: float = 0.0  # 0 = not a signal
    scale_down_delay_s: float = 60.0
    scale_to_zero_after_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return self.max_replicas > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AutoscalePolicy:
        if not d:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def policy_violations(prefix: str, p: AutoscalePolicy) -> list[FieldViolation]:
    """What is wrong with an enabled policy, each violation naming ``{prefix}.{field}``."""
    bad: list[FieldViolation] = []
    if not 0 <= p.max_replicas <= MAX_REPLICAS:
        bad.append(FieldViolation(f"{prefix}.max_replicas", f"must be between 0 and {MAX_REPLICAS}"))
    if not p.enabled:
        return bad
    if not 0 <= p.min_replicas <= p.max_replicas:
        bad.append(FieldViolation(f"{prefix}.min_replicas", "must be between 0 and max_replicas"))
    checks = (("target_queue", p.target_queue, 0.01, 10_000.0), ("target_kv_usage", p.target_kv_usage, 0.0, 1.0),
              ("target_ttft_ms", p.target_ttft_ms, 0.0, 600_000.0),
              ("scale_down_delay_s", p.scale_down_delay_s, 0.0, 86_400.0),
              ("scale_to_zero_after_s", p.scale_to_zero_after_s, 0.0, 7 * 86_400.0))
    for name, value, low, high in checks:
        if not (math.isfinite(value) and low <= value <= high):
            bad.append(FieldViolation(f"{prefix}.{name}", f"must be between {low:g} and {high:g}"))
    return bad


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica's last heartbeat: requests running or waiting on it, and its KV-cache use."""

    job_id: str
    last_seen: float
    requests: int
    kv_usage: float


@dataclass(frozen=True)
class Signals:
    """A deployment's load as the controller reads it."""

    ready: int  # replicas that serve now
    in_replicas: int  # requests running or waiting on those replicas
    held: int  # requests the gateways hold because no replica is ready
    kv_usage: float  # mean KV-cache use of the ready replicas, 0..1
    ttft_ms: float  # mean time to first token over the last window; 0 when nothing was served
    idle_s: float  # seconds since the last request arrived


@dataclass(frozen=True)
class Window:
    """What the policy remembers between ticks: the highest recommendation since the count
    last could have gone down, and since when it could."""

    since: float = 0.0
    highest: int = 0


def recommend(p: AutoscalePolicy, current: int, s: Signals) -> tuple[int, str]:
    """The replica count the signals ask for now (before delays), with the signal that set it."""
    want, why = 0, "idle"
    load = s.in_replicas + s.held
    if load:
        want, why = math.ceil(load / p.target_queue), f"{load} request(s) for {p.target_queue:g} per replica"
    base = max(current, s.ready, 1)
    if p.target_kv_usage and s.ready and s.kv_usage > p.target_kv_usage:
        kv = math.ceil(base * s.kv_usage / p.target_kv_usage)
        if kv > want:
            want, why = kv, f"KV cache {s.kv_usage:.0%} over {p.target_kv_usage:.0%}"
    if p.target_ttft_ms and s.ttft_ms > p.target_ttft_ms:
        ttft = min(base + 1, math.ceil(base * s.ttft_ms / p.target_ttft_ms))
        if ttft > want:
            want, why = ttft, f"TTFT {s.ttft_ms:.0f} ms over {p.target_ttft_ms:.0f} ms"
    if s.held and want < 1:
        want, why = 1, "a request is waiting"
    return want, why


def desired(p: AutoscalePolicy, current: int, s: Signals, window: Window, now: float
            ) -> tuple[int, str, Window]:
    """(replicas, reason, window to keep): up at once, down after the delay, to zero after the
    idle time; always within min and max, and at least 1 while a request waits."""
    want, why = recommend(p, current, s)
    floor = p.min_replicas
    if floor == 0 and current and s.idle_s < p.scale_to_zero_after_s:
        floor = 1  # one stays warm until the deployment has been idle long enough
    if s.held:
        floor = max(floor, 1)
    target = min(max(want, floor), p.max_replicas)
    if target >= current:
        return target, why, Window()
    if target == 0:  # idle for scale_to_zero_after_s already: that was the delay
        return 0, f"no request for {s.idle_s:.0f}s", Window()
    # Lower: go down only to the highest count recommended over a whole delay window.
    window = Window(window.since, max(window.highest, target)) if window.since else Window(now, target)
    if now - window.since < p.scale_down_delay_s:
        return current, f"{why}; holding {current} for the scale-down delay", window
    return window.highest, why, Window(now, target)


def signals(loads: list[ReplicaLoad], live_jobs: set[str], held: int, ttft_ms: float, idle_s: float,
            now: float, stale_after_s: float) -> Signals:
    """The signals of a deployment from its replicas' heartbeats (live slots, fresh only) and
    what the gateways counted."""
    fresh = [r for r in loads if r.job_id in live_jobs and now - r.last_seen <= stale_after_s]
    kv = sum(r.kv_usage for r in fresh) / len(fresh) if fresh else 0.0
    return Signals(ready=len(fresh), in_replicas=sum(r.requests for r in fresh), held=held, kv_usage=kv,
                   ttft_ms=ttft_ms, idle_s=idle_s)
