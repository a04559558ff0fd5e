"""Ingest's Redis state: operations (with the active set, leases and change notifications),
upload sessions, and idempotency keys.

Keys: ``pylon:ingest:op:{id}`` (JSON), ``pylon:ingest:ops:active`` (set of unfinished ids),
``pylon:ingest:oplease:{id}`` (who runs it; expires unless renewed), ``pylon:ingest:opreq:{key}``
(request id -> op id), ``pylon:ingest:upload:{id}`` (session JSON, expires with the session),
``pylon:ingest:upload:{id}:commit`` (the commit claim). Changes are published on
``pylon:ingest:opch:{id}`` so WatchOperation wakes at once instead of polling.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from pylon_services.ingest.domain.operations import Operation
from pylon_services.ingest.domain.uploads import SESSION_TTL_S, UploadSession

_P = "pylon:ingest:"
ACTIVE = _P + "ops:active"
_OP_TTL_S = 30 * 86400


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisState:
    """Operations and upload sessions in Redis (implements domain ``OperationStore``)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

    # -- operations -----------------------------------------------------------------------------
    async def create(self, op: Operation, request_key: str = "") -> Operation:
        if request_key:
            claimed = await self.r.set(_P + f"opreq:{request_key}", op.id, nx=True, ex=_OP_TTL_S)
            if not claimed:
                earlier = await self.r.get(_P + f"opreq:{request_key}")
                found = await self.get(_text(earlier)) if earlier else None
                if found is not None:
                    return found
        await self.save(op)
        return op

    async def get(self, op_id: str) -> Operation | None:
        raw = await self.r.get(_P + f"op:{op_id}")
        return Operation.from_dict(json.loads(raw)) if raw else None

    async def save(self, op: Operation) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(_P + f"op:{op.id}", json.dumps(op.to_dict()), ex=_OP_TTL_S)
        if op.done:
            pipe.srem(ACTIVE, op.id)
        else:
            pipe.sadd(ACTIVE, op.id)
        pipe.publish(_P + f"opch:{op.id}", op.state)
        await pipe.execute()

    async def active_ids(self) -> list[str]:
        return sorted(_text(m) for m in await self.r.smembers(ACTIVE))

    async def progress(self, op_id: str) -> dict[str, object]:
        raw = await self.r.hgetall(_P + f"opprog:{op_id}")
        return {_text(k): json.loads(v) for k, v in raw.items()}

    async def clear_progress(self, op_id: str) -> None:
        await self.r.delete(_P + f"opprog:{op_id}")

    # -- leases: one runner per operation across replicas ----------------------------------------
    async def acquire_lease(self, op_id: str, owner: str, ttl_s: float) -> bool:
        return bool(await self.r.set(_P + f"oplease:{op_id}", owner, nx=True, px=int(ttl_s * 1000)))

    async def renew_lease(self, op_id: str, owner: str, ttl_s: float) -> bool:
        """Extend the lease if we still hold it (compare-and-set in one script)."""
        script = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                  "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
        return bool(await self.r.eval(script, 1, _P + f"oplease:{op_id}", owner, int(ttl_s * 1000)))

    async def release_lease(self, op_id: str, owner: str) -> None:
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        await self.r.eval(script, 1, _P + f"oplease:{op_id}", owner)

    async def changes(self, op_id: str, poll_s: float = 2.0) -> AsyncIterator[None]:
        """Yields whenever the operation may have changed: on its notification, or every
        ``poll_s`` as a safety net (a missed message only delays, never loses, an update)."""
        pubsub = self.r.pubsub()
        await pubsub.subscribe(_P + f"opch:{op_id}")
        try:
            while True:
                yield None
                try:
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_s)
                except TimeoutError:
                    pass
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    # -- upload sessions --------------------------------------------------------------------------
    async def put_session(self, s: UploadSession) -> None:
        await self.r.set(_P + f"upload:{s.id}", json.dumps(s.to_dict()), ex=SESSION_TTL_S)

    async def get_session(self, session_id: str) -> UploadSession | None:
        raw = await self.r.get(_P + f"upload:{session_id}")
        return UploadSession.from_dict(json.loads(raw)) if raw else None

    async def claim_commit(self, session_id: str, request_id: str) -> str | None:
        """Claim the right to commit a session; returns None when we won, else the winner's
        request id (the same id means a retried call)."""
        key = _P + f"upload:{session_id}:commit"
        if await self.r.set(key, request_id, nx=True, ex=SESSION_TTL_S):
            return None
        winner = await self.r.get(key)
        return _text(winner) if winner else ""

    async def release_commit(self, session_id: str) -> None:
        await self.r.delete(_P + f"upload:{session_id}:commit")
