"""The operator's settings, read once from the environment (``PYLON_*``, the names the services,
the SDK, the Helm chart and docker-compose use for the same things)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Where the Pylon services are, the key the operator calls them with, and what it watches."""

    model_config = SettingsConfigDict(env_prefix="PYLON_", frozen=True, extra="ignore")

    # Any service's address: the others are discovered through PlatformService. A per-service
    # address below, when set, is used as is (no discovery for that service).
    address: str = ""
    scheduler_address: str = ""
    gateway_address: str = ""
    ingest_address: str = ""
    # The API key the operator calls with ("pyl_..."): an editor key of `operator_tenant`, or an
    # admin key. The same variable the SDK reads.
    token: str = Field(default="", repr=False)
    # Tenant the custom resources' jobs, deployments and datasets are created in ("-": the key's).
    operator_tenant: str = "-"
    # Namespaces to watch, comma-separated; empty watches the whole cluster.
    operator_namespaces: str = ""
    # Deadline of each gRPC call.
    operator_call_timeout_s: float = 30.0
    # How often each object's status is read back from its service.
    operator_sync_interval_s: float = 5.0
    # GPU pool scaling: how often, whose pending jobs count (comma-separated tenants; empty: the
    # operator's tenant), and how long demand must stay lower before a group shrinks.
    operator_pool_interval_s: float = 15.0
    operator_pool_tenants: str = ""
    operator_scale_down_delay_s: float = 300.0
    # Ceiling of the retry delay while a service is unreachable (doubling from 2 s).
    operator_max_backoff_s: float = 300.0

    @property
    def namespaces(self) -> list[str]:
        return [n.strip() for n in self.operator_namespaces.split(",") if n.strip()]

    @property
    def pool_tenants(self) -> list[str]:
        tenants = [t.strip() for t in self.operator_pool_tenants.split(",") if t.strip()]
        return tenants or [self.operator_tenant]

    def explicit_endpoints(self) -> dict[str, str]:
        """The services whose address is set directly."""
        given = {"scheduler": self.scheduler_address, "gateway": self.gateway_address, "ingest": self.ingest_address}
        return {svc: addr for svc, addr in given.items() if addr}
