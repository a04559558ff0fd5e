"""Ingest's Redis state: operations (with the active set, leases and change notifications),
upload sessions, and idempotency keys.

Keys: ``pylon:ingest:op:{id}`` (JSON), ``pylon:ingest:ops:active`` (set of unfinished ids),
``pylon:ingest:oplease:{id}`` (who runs it; expires unless renewed), ``pylon:ingest:opreq:{key}``
(request id -> op id), ``pylon:ingest:upload:{id}`` (session JSON, expires with the session),
``pylon:ingest:upload:{id}:commit`` (the commit claim). Changes are published on
``pylon:ingest:opch:{id}`` so WatchOperation wakes at once instead of polling.

Watchers share: ``OpWatch`` holds one pattern subscription per process for every operation's
notices, and one reader per watched operation (``runtime.fanout.Fanout``), so 500 watchers of
one operation cost one GET per change, not 500 subscriptions and 500 GETs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis

from pylon_services.ingest.domain.operations import Operation
from pylon_services.ingest.domain.uploads import SESSION_TTL_S, UploadSession
from pylon_services.runtime.fanout import Fanout

_P = "pylon:ingest:"
ACTIVE = _P + "ops:active"
_OP_TTL_S = 30 * 86400
_CHANNEL = _P + "opch:"
POLL_S = 2.0  # a watched operation is read at least this often (a lost notice only delays)

log = logging.getLogger("pylon.ingest")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisState:
    """Operations and upload sessions in Redis (implements domain ``OperationStore``)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis
        self._watch = OpWatch(redis, self.get)

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

    def watch(self, op_id: str) -> AsyncIterator[Operation | None]:
        """The operation now and after every change (None once it is gone), until it is done;
        shared by every watcher of ``op_id`` in this process."""
        return self._watch.watch(op_id)

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


class OpWatch:
    """Operation snapshots for watchers: one reader per operation, woken by one process-wide
    pattern subscription, with a ``POLL_S`` read as a safety net."""

    def __init__(self, redis: aioredis.Redis, get: Callable[[str], Awaitable[Operation | None]],
                 poll_s: float = POLL_S) -> None:
        self.r = redis
        self._get = get
        self._poll_s = poll_s
        self._wake: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None
        self._fanout: Fanout[str, Operation | None] = Fanout(self._follow, name="ingest-operation")

    def watch(self, op_id: str) -> AsyncIterator[Operation | None]:
        return self._fanout.watch(op_id)

    def readers(self) -> int:
        """Operations read for watchers now (one each, whatever the number of watchers)."""
        return self._fanout.producers()

    async def _follow(self, op_id: str) -> AsyncIterator[Operation | None]:
        wake = self._wake[op_id] = asyncio.Event()
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="ingest-operation-notices")
        try:
            while True:
                wake.clear()  # before the read: a notice published after it wakes the next wait
                op = await self._get(op_id)
                yield op
                if op is None or op.done:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), self._poll_s)
                except TimeoutError:
                    pass
        finally:
            if self._wake.get(op_id) is wake:
                del self._wake[op_id]
            if not self._wake and self._listener is not None:
                self._listener.cancel()
                self._listener = None

    async def _listen(self) -> None:
        """Route change notices to the readers that wait for them; reconnect after a failure
        (meanwhile the readers' polls carry on)."""
        while True:
            pubsub = self.r.pubsub()
            try:
                await pubsub.psubscribe(_CHANNEL + "*")
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg and msg.get("type") == "pmessage":
                        channel = msg["channel"]
                        op_id = (channel.decode() if isinstance(channel, bytes) else channel)[len(_CHANNEL):]
                        if (event := self._wake.get(op_id)) is not None:
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis blips: the polls cover until it is back
                log.warning("operation notices: subscription lost; retrying", exc_info=True)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await asyncio.shield(pubsub.aclose())
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
