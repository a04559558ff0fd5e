"""Admin: API keys (create, list, delete), identity, the registry's index rebuild, and tenants'
serving limits (the gateway's quotas)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pylon.admin.v1 import admin_pb2
from pylon.gateway.v1 import gateway_pb2
from pylon.paging import Paged
from pylon.registry.v1 import registry_pb2
from pylon.resources._base import _Resource
from pylon.types import ApiKey, Identity, IndexCounts, ServingLimits


def _key_name(name: str) -> str:
    """Accept a key id or its resource name "apiKeys/{key_id}"."""
    return name if name.startswith("apiKeys/") else f"apiKeys/{name}"


class Admin(_Resource):
    def create_key(self, tenant: str, role: str = "editor", description: str = "") -> tuple[str, str]:
        """Returns (key name, token); the token is shown only here."""
        req = admin_pb2.CreateApiKeyRequest(tenant=tenant, role=f"ROLE_{role.upper()}",
                                            description=description)
        resp = self._c.call(self._c.admin_stub.CreateApiKey, req)
        return resp.api_key.name, resp.token

    def list_keys(self, tenant: str = "", *, page_size: int = 100, limit: int | None = None) -> Paged[ApiKey]:
        """Every API key (never its secret), or those of ``tenant``; admin key. Pages are
        fetched as iteration reaches them."""
        def page(token: str, size: int) -> tuple[Sequence[ApiKey], str]:
            req = admin_pb2.ListApiKeysRequest(tenant=tenant, page_size=size, page_token=token)
            resp = self._c.call(self._c.admin_stub.ListApiKeys, req)
            return [ApiKey.from_proto(k) for k in resp.api_keys], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

    def delete_key(self, name: str) -> None:
        """Revoke a key ("apiKeys/{key_id}" or the id); admin key. Services that cached the
        key's lookup accept it until their cache entry expires (PYLON_AUTH_CACHE_TTL_S)."""
        self._c.call(self._c.admin_stub.DeleteApiKey, admin_pb2.DeleteApiKeyRequest(name=_key_name(name)))

    def whoami(self) -> Identity:
        """Tenant, role and key name of the key in use."""
        return Identity.from_proto(self._c.call(self._c.admin_stub.WhoAmI, admin_pb2.WhoAmIRequest()))

    def reindex(self) -> IndexCounts:
        """Rebuild the registry's index from object storage (admin role)."""
        resp = self._c.call(self._c.registry.RebuildIndex, registry_pb2.RebuildIndexRequest(), timeout=3600)
        return IndexCounts.from_proto(resp)

    def set_serving_limits(self, tenant: str, **limits: Any) -> ServingLimits:
        """Replace ``tenant``'s serving limits (admin key): ``requests_per_min``,
        ``tokens_per_min``, ``key_requests_per_min``, ``key_tokens_per_min``, ``max_concurrent``
        (0: unlimited), ``priority`` ("low", "normal", "high") and ``weight``. Those given
        override the gateway's defaults; none given returns the tenant to the defaults."""
        req = gateway_pb2.SetServingLimitsRequest(parent=f"tenants/{tenant}",
                                                  limits=gateway_pb2.ServingLimits(**limits))
        return ServingLimits.from_proto(tenant, self._c.call(self._c.gateway.SetServingLimits, req))

    def get_serving_limits(self, tenant: str = "") -> ServingLimits:
        """A tenant's serving limits in effect (default: the key's own tenant)."""
        req = gateway_pb2.GetServingLimitsRequest(parent=f"tenants/{tenant}" if tenant else "")
        resp = self._c.call(self._c.gateway.GetServingLimits, req)
        return ServingLimits.from_proto(tenant or self.whoami().tenant, resp)
