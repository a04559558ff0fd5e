"""An in-process cache in front of the two hot index reads, kept correct by invalidation.

Get-version and resolve-alias are what the gateway, the trainer and every SDK load call, and
each was a Redis round trip. This cache answers repeats from memory. It is the client-side
caching pattern Redis itself documents, built on a plain pub/sub channel:

- every index write publishes the changed model (``redis_index.CHANGED_CHANNEL``) after the
  write is in Redis, and calls the listeners of its own process synchronously, so a client
  reads its own writes through the same registry process;
- a cached model is dropped when its message arrives;
- a read that raced a write is not cached: each model has a generation, bumped by every
  invalidation, and a result is stored only if the generation did not move while it was read;
- while the subscription is down (startup, Redis restart), nothing is served from memory and
  everything cached is dropped, because messages may have been missed;
- entries also expire after ``ttl_s`` as a backstop.

Another registry replica sees a write as soon as the message is delivered (sub-millisecond on
one Redis). That is the staleness bound the design accepts. ``ttl_s`` 0 turns the cache off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from typing import Any

from pylon_services.registry.store.redis_index import CHANGED_CHANNEL, AsyncIndexReader

log = logging.getLogger("pylon.registry")
MAX_MODELS = 10_000
RESUBSCRIBE_AFTER_S = 1.0

VersionView = tuple[dict[str, Any] | None, dict[str, dict[str, Any]], list[str]]


class _Entry:
    __slots__ = ("aliases", "expires", "versions")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.aliases: dict[str, dict[str, Any]] | None = None
        self.versions: dict[int, tuple[dict[str, Any], list[str]]] = {}


class CachedIndexReader:
    """Same reads as ``AsyncIndexReader`` (``domain.ports.AsyncIndexReads``), from memory when
    possible. ``invalidate`` is the listener the synchronous index calls after each write."""

    def __init__(self, reader: AsyncIndexReader, redis_async: Any, ttl_s: float) -> None:
        self._reader, self._redis, self.ttl_s = reader, redis_async, ttl_s
        self._models: dict[str, _Entry] = {}
        self._gens: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._epoch = 0  # bumped whenever the feed was (re)connected: reads from before never fill
        self._lock = threading.Lock()  # invalidations also come from the domain's worker threads
        self._live = False  # subscribed: invalidations are flowing
        self._task: asyncio.Task[None] | None = None
        self.hits = self.misses = 0

    # -- invalidation ---------------------------------------------------------------------------
    def invalidate(self, tm: str) -> None:
        """Drop ``"{tenant}/{model}"``, and make reads already in flight for it uncacheable."""
        with self._lock:
            self._gens[tm] = next(self._counter)
            self._models.pop(tm, None)

    def _drop_all(self) -> None:
        with self._lock:
            self._models.clear()
            self._gens.clear()
            self._epoch += 1

    def _stamp(self, tm: str) -> tuple[int, int | None]:
        return self._epoch, self._gens.get(tm)

    async def start(self) -> None:
        if self.ttl_s > 0:
            self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANGED_CHANNEL)
                self._drop_all()  # anything cached before now may have missed a message
                self._live = True
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self.invalidate(data.decode() if isinstance(data, bytes) else data)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - any feed failure: serve from Redis until resubscribed
                log.warning("registry read cache: invalidation feed lost (%s); cache off until it is back", err)
            finally:
                self._live = False
                self._drop_all()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RESUBSCRIBE_AFTER_S)

    # -- reads ----------------------------------------------------------------------------------
    def _entry(self, tm: str, stamp: tuple[int, int | None]) -> _Entry | None:
        """The entry to fill after a read that started at ``stamp``; None if the model changed
        meanwhile, the feed reconnected meanwhile, or the cache is off."""
        if not self._live or self._stamp(tm) != stamp:
            return None
        entry = self._models.get(tm)
        now = time.monotonic()
        if entry is None or entry.expires < now:
            if len(self._models) >= MAX_MODELS:
                self._models.pop(next(iter(self._models)))  # oldest inserted first
            entry = self._models[tm] = _Entry(now + self.ttl_s)
        return entry

    def _fresh(self, tm: str) -> _Entry | None:
        entry = self._models.get(tm) if self._live else None
        return entry if entry is not None and entry.expires >= time.monotonic() else None

    async def version_view(self, tenant: str, model: str, number: int) -> VersionView:
        tm = f"{tenant}/{model}"
        entry = self._fresh(tm)
        if entry is not None and entry.aliases is not None and number in entry.versions:
            self.hits += 1
            cached, cached_deps = entry.versions[number]
            return cached, entry.aliases, cached_deps
        self.misses += 1
        stamp = self._stamp(tm)
        doc, aliases, deps = await self._reader.version_view(tenant, model, number)
        if doc is not None:
            with self._lock:
                if (fill := self._entry(tm, stamp)) is not None:
                    fill.aliases = aliases
                    fill.versions[number] = (doc, deps)
        return doc, aliases, deps

    async def alias(self, tenant: str, model: str, alias: str) -> dict[str, Any] | None:
        tm = f"{tenant}/{model}"
        entry = self._fresh(tm)
        if entry is not None and entry.aliases is not None:
            self.hits += 1
            return entry.aliases.get(alias)
        self.misses += 1
        stamp = self._stamp(tm)
        aliases = await self._reader.aliases(tenant, model)
        with self._lock:
            if (fill := self._entry(tm, stamp)) is not None:
                fill.aliases = aliases
        return aliases.get(alias)
