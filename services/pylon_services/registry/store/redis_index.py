"""The registry index in Redis (implements ``domain.ports.RegistryIndex``).

Keys (``pylon:reg:`` prefix; ``{t}/{m}`` is tenant/model):
  models:{t}            ZSET of model ids (score 0, read by lexical range)
  model:{t}/{m}         STRING model document (JSON)
  vers:{t}/{m}          ZSET of version numbers (score = number): newest-first pages in O(log n + page)
  ver:{t}/{m}           HASH number -> version document (manifest + mutable fields, JSON)
  alias:{t}/{m}         HASH alias -> alias document (JSON)
  deps:{t}/{m}          HASH number -> JSON list of deployment names
  req:{t}/{m}           HASH request_id -> number
  blobs:{t}             HASH sha256 digest -> object key of verified bytes (dedupe of uploads)
  wal                   HASH token -> "{t}/{m}|{unix time}" (write-ahead markers)
  built                 STRING set once a full rebuild finished

Every write that changes what ``version_view``/``alias`` return is followed by a PUBLISH of
"{t}/{m}" on ``pylon:reg:changed`` and by the in-process listeners, so read caches
(``read_cache.CachedIndexReader``) drop that model at once, in this process and in every other.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

P = "pylon:reg:"
CHANGED_CHANNEL = P + "changed"


def _j(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _l(raw: bytes | str | None) -> Any:
    return None if raw is None else json.loads(raw)


class RedisRegistryIndex:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, tenant: str, model: str) -> None:
        """Tell read caches (here synchronously, elsewhere through Redis) that a model changed.
        Called after the write is in Redis, so a cache refilled afterwards reads the new data."""
        tm = f"{tenant}/{model}"
        for listener in self.listeners:
            listener(tm)
        self.r.publish(CHANGED_CHANNEL, tm)

    # -- markers ------------------------------------------------------------------------------
    def begin(self, tenant: str, model: str) -> str:
        token = uuid.uuid4().hex
        self.r.hset(P + "wal", token, f"{tenant}/{model}|{time.time()}")
        return token

    def end(self, token: str) -> None:
        self.r.hdel(P + "wal", token)

    def stale(self, older_than_s: float) -> list[tuple[str, str]]:
        """Models with a write-ahead marker older than ``older_than_s`` (their writer died);
        the markers are removed, so the caller must rebuild those models."""
        out: set[tuple[str, str]] = set()
        cutoff = time.time() - older_than_s
        for token, raw in self.r.hgetall(P + "wal").items():
            tm, _, ts = (raw.decode() if isinstance(raw, bytes) else raw).rpartition("|")
            if float(ts) <= cutoff:
                tenant, model = tm.split("/", 1)
                out.add((tenant, model))
                self.r.hdel(P + "wal", token)
        return sorted(out)

    def is_built(self) -> bool:
        return bool(self.r.exists(P + "built"))

    def mark_built(self) -> None:
        self.r.set(P + "built", str(time.time()))

    # -- models ------------------------------------------------------------------------------
    def put_model(self, tenant: str, model: str, doc: dict[str, Any]) -> None:
        with self.r.pipeline() as p:
            p.zadd(P + f"models:{tenant}", {model: 0})
            p.set(P + f"model:{tenant}/{model}", _j(doc))
            p.execute()
        self._changed(tenant, model)

    def get_model(self, tenant: str, model: str) -> dict[str, Any] | None:
        return _l(self.r.get(P + f"model:{tenant}/{model}"))  # type: ignore[arg-type]

    def list_models(self, tenant: str, after: str, limit: int) -> list[dict[str, Any]]:
        names = self.r.zrangebylex(P + f"models:{tenant}", f"({after}" if after else "-", "+", start=0, num=limit)
        if not names:
            return []
        raws = self.r.mget([P + f"model:{tenant}/{n.decode()}" for n in names])  # type: ignore[union-attr]
        return [json.loads(r) for r in raws if r is not None]  # type: ignore[union-attr]

    def drop_model(self, tenant: str, model: str) -> None:
        tm = f"{tenant}/{model}"
        with self.r.pipeline() as p:
            p.zrem(P + f"models:{tenant}", model)
            p.delete(*(P + f"{k}:{tm}" for k in ("model", "vers", "ver", "alias", "deps", "req")))
            p.execute()
        self._changed(tenant, model)

    # -- versions ----------------------------------------------------------------------------
    def put_versions(self, tenant: str, model: str, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        tm = f"{tenant}/{model}"
        with self.r.pipeline(transaction=False) as p:
            p.zadd(P + f"vers:{tm}", {str(d["version"]): d["version"] for d in docs})
            p.hset(P + f"ver:{tm}", mapping={str(d["version"]): _j(d) for d in docs})
            p.execute()
        self._changed(tenant, model)

    def get_version(self, tenant: str, model: str, number: int) -> dict[str, Any] | None:
        return _l(self.r.hget(P + f"ver:{tenant}/{model}", str(number)))  # type: ignore[arg-type]

    def latest_version(self, tenant: str, model: str) -> int:
        top = self.r.zrevrange(P + f"vers:{tenant}/{model}", 0, 0, withscores=True)
        return int(top[0][1]) if top else 0  # type: ignore[index]

    def count_versions(self, tenant: str, model: str) -> int:
        return int(self.r.zcard(P + f"vers:{tenant}/{model}"))  # type: ignore[arg-type]

    def scan_versions(self, tenant: str, model: str, below: int | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` versions numbered below ``below`` (None: from the newest), newest first."""
        tm = f"{tenant}/{model}"
        hi = f"({below}" if below is not None else "+inf"
        nums = self.r.zrevrangebyscore(P + f"vers:{tm}", hi, "-inf", start=0, num=limit)
        if not nums:
            return []
        raws = self.r.hmget(P + f"ver:{tm}", nums)  # type: ignore[arg-type]
        return [json.loads(r) for r in raws if r is not None]  # type: ignore[union-attr]

    # -- aliases, deployments, requests ---------------------------------------------------------
    def put_alias(self, tenant: str, model: str, alias: str, doc: dict[str, Any] | None) -> None:
        key = P + f"alias:{tenant}/{model}"
        if doc is None:
            self.r.hdel(key, alias)
        else:
            self.r.hset(key, alias, _j(doc))
        self._changed(tenant, model)

    def replace_aliases(self, tenant: str, model: str, docs: dict[str, dict[str, Any]]) -> None:
        """Swap the whole alias map at once (rebuild), so readers never see it half-written."""
        self._replace(P + f"alias:{tenant}/{model}", {a: _j(d) for a, d in docs.items()})
        self._changed(tenant, model)

    def replace_deployments(self, tenant: str, model: str, deployments: dict[int, list[str]]) -> None:
        self._replace(P + f"deps:{tenant}/{model}", {str(n): _j(sorted(d)) for n, d in deployments.items() if d})
        self._changed(tenant, model)

    def _replace(self, key: str, mapping: dict[str, Any]) -> None:
        with self.r.pipeline(transaction=True) as p:
            p.delete(key)
            if mapping:
                p.hset(key, mapping=mapping)  # type: ignore[arg-type]
            p.execute()

    def aliases(self, tenant: str, model: str) -> dict[str, dict[str, Any]]:
        raw = self.r.hgetall(P + f"alias:{tenant}/{model}")
        return {k.decode(): json.loads(v) for k, v in raw.items()}  # type: ignore[union-attr]

    def put_deployments(self, tenant: str, model: str, number: int, deployments: list[str]) -> None:
        key = P + f"deps:{tenant}/{model}"
        if deployments:
            self.r.hset(key, str(number), _j(sorted(deployments)))
        else:
            self.r.hdel(key, str(number))
        self._changed(tenant, model)

    def deployments(self, tenant: str, model: str, number: int) -> list[str]:
        return _l(self.r.hget(P + f"deps:{tenant}/{model}", str(number))) or []  # type: ignore[arg-type]

    def version_view(self, tenant: str, model: str, number: int
                     ) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]], list[str]]:
        """A version with the model's aliases and its deployments, in one round trip."""
        tm = f"{tenant}/{model}"
        with self.r.pipeline(transaction=False) as p:
            p.hget(P + f"ver:{tm}", str(number))
            p.hgetall(P + f"alias:{tm}")
            p.hget(P + f"deps:{tm}", str(number))
            doc, aliases, deps = p.execute()
        return (_l(doc), {k.decode(): json.loads(v) for k, v in aliases.items()}, _l(deps) or [])

    def put_blobs(self, tenant: str, mapping: dict[str, str]) -> None:
        if mapping:
            self.r.hset(P + f"blobs:{tenant}", mapping=dict(mapping))  # type: ignore[arg-type]

    def blob(self, tenant: str, digest: str) -> str | None:
        raw = self.r.hget(P + f"blobs:{tenant}", digest)
        return raw.decode() if raw is not None else None  # type: ignore[union-attr]

    def put_request(self, tenant: str, model: str, request_id: str, number: int) -> None:
        self.r.hset(P + f"req:{tenant}/{model}", request_id, number)

    def request(self, tenant: str, model: str, request_id: str) -> int | None:
        raw = self.r.hget(P + f"req:{tenant}/{model}", request_id)
        return int(raw) if raw is not None else None  # type: ignore[arg-type]


class AsyncIndexReader:
    """The two hottest reads (get a version, resolve an alias) on the event loop itself, with no
    worker-thread hop: one pipelined round trip each."""

    def __init__(self, client: Any) -> None:  # redis.asyncio.Redis
        self.r = client

    async def version_view(self, tenant: str, model: str, number: int
                           ) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]], list[str]]:
        tm = f"{tenant}/{model}"
        async with self.r.pipeline(transaction=False) as p:
            p.hget(P + f"ver:{tm}", str(number))
            p.hgetall(P + f"alias:{tm}")
            p.hget(P + f"deps:{tm}", str(number))
            doc, aliases, deps = await p.execute()
        return (_l(doc), {k.decode(): json.loads(v) for k, v in aliases.items()}, _l(deps) or [])

    async def alias(self, tenant: str, model: str, alias: str) -> dict[str, Any] | None:
        return _l(await self.r.hget(P + f"alias:{tenant}/{model}", alias))

    async def aliases(self, tenant: str, model: str) -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(P + f"alias:{tenant}/{model}")
        return {k.decode(): json.loads(v) for k, v in raw.items()}
