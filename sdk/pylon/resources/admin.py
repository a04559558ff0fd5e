"""Admin: API keys and identity."""

from __future__ import annotations

from pylon.admin.v1 import admin_pb2
from pylon.resources._base import _Resource


class Admin(_Resource):
    def create_key(self, tenant: str, role: str = "editor", description: str = "") -> tuple[str, str]:
        """Returns (key name, token); the token is shown only here."""
        req = admin_pb2.CreateApiKeyRequest(tenant=tenant, role=admin_pb2.Role.Value(f"ROLE_{role.upper()}"),
                                            description=description)
        resp = self._c.call(self._c.admin_stub.CreateApiKey, req)
        return resp.api_key.name, resp.token

    def whoami(self) -> dict[str, str]:
        resp = self._c.call(self._c.admin_stub.WhoAmI, admin_pb2.WhoAmIRequest())
        return {"tenant": resp.tenant, "role": admin_pb2.Role.Name(resp.role)[5:].lower(), "api_key": resp.api_key}

    def reindex(self) -> dict[str, int]:
        """Rebuild the registry's index from object storage (admin role)."""
        from pylon.registry.v1 import registry_pb2

        resp = self._c.call(self._c.registry.RebuildIndex, registry_pb2.RebuildIndexRequest(), timeout=3600)
        return {"tenants": resp.tenants, "models": resp.models, "versions": resp.versions, "dropped": resp.dropped}
