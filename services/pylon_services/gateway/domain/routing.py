"""Replica routing and deployment state, as pure functions over registrations."""

from __future__ import annotations

from dataclasses import dataclass

STALE_AFTER_S = 10.0


@dataclass(frozen=True)
class ReplicaView:
    job_id: str
    address: str
    last_seen: float
    running: int

    def fresh(self, now: float) -> bool:
        return now - self.last_seen <= STALE_AFTER_S


def pick_replica(replicas: list[ReplicaView], inflight: dict[str, int], now: float) -> ReplicaView | None:
    """Least loaded fresh replica: the gateway's own in-flight count first (exact), the
    replica's last reported load as a tie-breaker."""
    live = [r for r in replicas if r.fresh(now)]
    if not live:
        return None
    return min(live, key=lambda r: (inflight.get(r.address, 0), r.running, r.address))


def deployment_state(replicas: list[ReplicaView], now: float, failed_jobs: int, desired: int) -> tuple[str, str]:
    """(state, message) of a deployment from its replicas' registrations."""
    ready = sum(r.fresh(now) for r in replicas)
    if ready:
        return "ready", f"{ready}/{desired} replica(s) ready"
    if failed_jobs >= desired:
        return "failed", "every replica failed to start; see the replica jobs' logs"
    return "pending", f"0/{desired} replica(s) ready; starting"
