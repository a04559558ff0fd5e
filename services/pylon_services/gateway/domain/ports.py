"""What the gateway's API needs from storage; the Redis adapter is ``store/deployments.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.routing import ReplicaView


class DeploymentRecords(Protocol):
    """Deployment records (every write a compare-and-swap on ``version``) and the replica
    registrations engines heartbeat."""

    async def create(self, rec: DeploymentRecord) -> bool:
        """Create-only (stored as version 1): False if the name is taken."""

    async def update(self, tenant: str, dep: str,
                     change: Callable[[DeploymentRecord], DeploymentRecord]) -> DeploymentRecord:
        """Read-modify-write under compare-and-swap; ``change`` is re-applied to a fresh read
        when a concurrent write wins, and may raise to refuse."""

    async def get(self, tenant: str, dep: str) -> DeploymentRecord: ...

    async def delete(self, tenant: str, dep: str) -> None: ...

    async def list_deployments(self, tenant: str, page_size: int, after: str) -> tuple[list[DeploymentRecord], str]:
        """One page by id after ``after``, and the next page's token ("" at the end)."""

    async def forget_replicas(self, tenant: str, dep: str, job_ids: set[str]) -> None:
        """Drop the registrations of stopped replicas (a killed engine cannot remove its own)."""

    async def replicas(self, tenant: str, dep: str) -> list[ReplicaView]: ...
