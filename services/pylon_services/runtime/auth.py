"""API keys: issue, store hashed in Redis, authenticate bearer tokens, and decide roles.

A token is ``pyl_<key_id>_<secret>``; Redis keeps only its SHA-256 under ``pylon:apikey:<key_id>``.
The bootstrap admin key from settings is accepted without being stored, so a fresh platform
can create its first real keys. Lookups are cached for a few seconds per process.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from pylon_services.common.errors import NotFound, PermissionDenied, Unauthenticated
from pylon_services.common.names import Principal, check_tenant
from pylon_services.runtime.redis_text import as_text

# viewer reads; editor writes; maintainer also deletes and moves protected aliases; admin also
# manages API keys and may act in any tenant.
ROLES = ("viewer", "editor", "maintainer", "admin")
_KEY_PREFIX = "pylon:apikey:"
_INDEX = "pylon:apikeys"
# Methods anyone may call without a key (discovery, health, reflection).
PUBLIC_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
    "pylon.common.v1.PlatformService",
})
_READ_PREFIXES = ("Get", "List", "Watch", "Stream", "Resolve", "Explain", "Preview", "WhoAmI")
MAX_TOKEN_CHARS = 256  # real tokens are about 50; a longer one is refused without a lookup


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def required_role(full_method: str) -> str | None:
    """The least role a method needs: None for public ones, 'admin' for key management,
    'viewer' for reads, 'editor' for everything that writes."""
    service, _, method = full_method.lstrip("/").partition("/")
    if service in PUBLIC_SERVICES:
        return None
    if service == "pylon.admin.v1.AdminService" and method != "WhoAmI":
        return "admin"
    return "viewer" if method.startswith(_READ_PREFIXES) else "editor"


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    tenant: str
    role: str
    description: str
    create_time: float


class ApiKeyStore:
    """Keys in Redis; the secret never leaves ``create``."""

    def __init__(self, redis: aioredis.Redis, bootstrap_admin_key: str = "", cache_ttl_s: float = 5.0) -> None:
        self._redis = redis
        self._bootstrap_hash = hash_token(bootstrap_admin_key) if bootstrap_admin_key else ""
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        # Lookups in flight, by token: a burst of calls with one new key (500 watchers starting
        # together) makes one Redis round trip, not one per call (and one pooled connection each).
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}

    async def create(self, tenant: str, role: str, description: str = "") -> tuple[StoredKey, str]:
        check_tenant("tenant", tenant)
        if role not in ROLES:
            from pylon_services.common.errors import InvalidArgument
            raise InvalidArgument.field("role", f"must be one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        token = f"pyl_{key_id}_{secrets.token_urlsafe(24)}"
        key = StoredKey(key_id, tenant, role, description, time.time())
        await self._redis.hset(_KEY_PREFIX + key_id, mapping={
            "hash": hash_token(token), "tenant": tenant, "role": role,
            "description": description, "create_time": str(key.create_time)})
        await self._redis.zadd(_INDEX, {key_id: 0})
        return key, token

    async def list_keys(self, tenant: str = "", page_size: int = 100, after: str = "") -> list[StoredKey]:
        ids = await self._redis.zrangebylex(_INDEX, f"({after}" if after else "-", "+", start=0, num=page_size * 4)
        out: list[StoredKey] = []
        for raw in ids:
            key_id = as_text(raw)
            stored = await self._get(key_id)
            if stored and (not tenant or stored.tenant == tenant):
                out.append(stored)
            if len(out) >= page_size:
                break
        return out

    async def delete(self, key_id: str) -> None:
        if not await self._redis.delete(_KEY_PREFIX + key_id):
            raise NotFound(f"apiKeys/{key_id} not found")
        await self._redis.zrem(_INDEX, key_id)
        self._cache.clear()

    async def _get(self, key_id: str) -> StoredKey | None:
        h = await self._redis.hgetall(_KEY_PREFIX + key_id)
        if not h:
            return None
        d = {as_text(k): as_text(v) for k, v in h.items()}
        return StoredKey(key_id, d["tenant"], d["role"], d.get("description", ""), float(d["create_time"]))

    def authenticate_cached(self, token: str) -> Principal | None:
        """The principal if the answer is known without Redis (bootstrap key or a fresh cache
        entry); None when ``authenticate`` must look it up. Raises for known-bad tokens."""
        if not token:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>' metadata")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("invalid API key")
        cached = self._cache.get(token)
        if cached is not None and cached[0] > time.monotonic():
            if cached[1] is None:
                raise Unauthenticated("invalid API key")
            return cached[1]
        return None

    async def authenticate(self, token: str) -> Principal:
        """Resolve a bearer token to a principal, or raise Unauthenticated."""
        principal = self.authenticate_cached(token)
        if principal is not None:
            return principal
        digest = hash_token(token)
        if self._bootstrap_hash and hmac.compare_digest(digest, self._bootstrap_hash):
            principal = Principal(tenant="admin", role="admin", key_id="bootstrap")
        else:
            lookup = self._inflight.get(token)
            if lookup is None:  # the first caller starts it; it runs on if that caller goes away
                lookup = self._inflight[token] = asyncio.ensure_future(self._lookup(token, digest))
                lookup.add_done_callback(functools.partial(self._lookup_done, token))
            principal = await asyncio.shield(lookup)
        if len(self._cache) > 10_000:
            self._cache.clear()
        # Keyed by the token itself: this dict lives only in this process's memory.
        self._cache[token] = (time.monotonic() + self._ttl, principal)
        if principal is None:
            raise Unauthenticated("invalid API key")
        return principal

    def _lookup_done(self, token: str, _done: asyncio.Future[Principal | None]) -> None:
        self._inflight.pop(token, None)

    async def _lookup(self, token: str, digest: str) -> Principal | None:
        parts = token.split("_")
        if len(parts) < 3 or parts[0] != "pyl":
            return None
        h = await self._redis.hgetall(_KEY_PREFIX + parts[1])
        stored = as_text(h.get(b"hash", b""))
        if not stored or not hmac.compare_digest(stored, digest):
            return None
        return Principal(tenant=as_text(h[b"tenant"]), role=as_text(h[b"role"]), key_id=parts[1])


def authorize(principal: Principal, needed: str) -> None:
    if not role_allows(principal.role, needed):
        raise PermissionDenied(f"role {principal.role!r} may not do this; it needs {needed!r}")
