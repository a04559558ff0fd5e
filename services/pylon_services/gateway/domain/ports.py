"""What the gateway's API needs from storage; the Redis adapter is ``store/deployments.py``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pylon_services.gateway.domain.admission import Bucket, Verdict
from pylon_services.gateway.domain.autoscale import ReplicaLoad
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.rollouts import VersionCounters
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

    async def replica_loads(self, tenant: str, dep: str) -> list[ReplicaLoad]:
        """The replicas' last heartbeats as the autoscaler reads them."""

    async def all_deployments(self) -> list[tuple[str, str]]:
        """(tenant, deployment) of every deployment: what the controller visits."""


@dataclass(frozen=True)
class ServingView:
    """What the gateways counted of a deployment's requests, summed over them."""

    versions: Mapping[str, VersionCounters] = field(default_factory=dict)
    held: int = 0  # requests held now for want of a ready replica
    last_request: float = 0.0
    cold_start_s: float = 0.0  # the last cold start's wait


class ServingCounts(Protocol):
    """Per-deployment request counts shared by the gateways, and the controller's lease."""

    async def add(self, tenant: str, dep: str, counts: Mapping[str, Mapping[str, float]],
                  last_request: float) -> None: ...

    async def set_held(self, tenant: str, dep: str, held: int) -> None: ...

    async def set_cold_start(self, tenant: str, dep: str, seconds: float) -> None: ...

    async def read(self, tenant: str, dep: str) -> ServingView: ...

    async def hold_lease(self, holder: str, ttl_s: float) -> bool:
        """Take or renew the controller lease; False while another gateway holds it."""

    async def release_lease(self, holder: str) -> None: ...


class Quotas(Protocol):
    """Serving quotas shared by every gateway (the Redis adapter is ``store/quotas.py``)."""

    async def acquire(self, tenant: str, buckets: list[Bucket], max_concurrent: int, lease: str,
                      lease_ttl_s: float) -> Verdict:
        """Take every bucket's cost and a concurrency lease (when ``max_concurrent``), or nothing."""

    async def settle(self, tenant: str, refunds: list[tuple[Bucket, int]], lease: str) -> None:
        """Give back each bucket's unused reservation (negative: take the excess) and end the lease."""

    async def limits(self, tenant: str) -> dict[str, Any]:
        """The fields an admin set for ``tenant`` (none: the defaults apply)."""

    async def set_limits(self, tenant: str, overrides: dict[str, Any]) -> None:
        """Replace ``tenant``'s overrides; empty removes them."""
