"""How engine replicas announce themselves to the gateway (torch-free, so the gateway can import it)."""

from __future__ import annotations

HEARTBEAT_S = 2.0


def replicas_key(tenant: str, deployment_id: str) -> str:
    """Redis hash: replica job id -> {"address", "ts", "running"}, refreshed every HEARTBEAT_S."""
    return f"pylon:replicas:{tenant}:{deployment_id}"
