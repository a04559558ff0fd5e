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


def deployment_state(ready: int, desired: int, ended: list[str], slots: int, deleting: bool = False
                     ) -> tuple[str, str]:
    """(state, message) of a deployment: ``ready`` replicas serve, ``ended`` holds one line per
    replica job that is over (failed, cancelled or exited) out of ``slots`` replica jobs.
    FAILED once every replica job is over and none serves, with the first job's reason."""
    if deleting:
        return "deleting", "stopping the replicas"
    if ready:
        return "ready", f"{ready}/{desired} replica(s) ready"
    if slots and len(ended) >= slots:
        return "failed", f"every replica job ended without serving; {ended[0]}"
    starting = f"; {len(ended)} replica job(s) ended: {ended[0]}" if ended else "; starting"
    return "pending", f"0/{desired} replica(s) ready{starting}"
