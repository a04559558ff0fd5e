"""Per-process fan-out: one producer per key, shared by every watcher of that key.

Why: a Watch stream that holds its own Redis subscription or poll loop costs a connection (or a
GET per poll) per watcher, so a few hundred watchers of one job or operation exhaust the Redis
pool. With ``Fanout``, N watchers of a key cost one producer: the first watcher starts it, the
last one to leave stops it.

Values are *snapshots* (the whole state of the watched thing), not deltas: a watcher that reads
slower than the producer yields skips intermediate values and always gets the newest one,
so a slow client never holds memory or slows the others. What every watcher is guaranteed:
the newest value at the time it subscribes (if the producer has made one), every value it is
waiting for when it is made, and the last value before the producer ends. When the producer
ends, every watcher's iteration ends after that last value; when it raises, every watcher
raises the same exception.

Use::

    fanout = Fanout(lambda key: poll_job(key))          # an async iterator of snapshots per key
    async for snapshot in fanout.watch(key):             # in each Watch handler
        ...

``watch`` is an async generator: leaving the ``async for`` (or the handler being cancelled)
unsubscribes. No grpc, no Redis here: a source is any ``key -> AsyncIterator[V]``. The source
runs in a fresh context, not in the call of the watcher that started it: it must not rely on the
caller's principal, request id or deadline (check visibility per watcher, on each value).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("pylon.fanout")


class _Feed(Generic[V]):
    """The state of one key: the newest value, a counter of values, the end, the watchers."""

    def __init__(self) -> None:
        self.value: V | None = None
        self.seq = 0  # how many values the producer has made
        self.ended = False
        self.error: BaseException | None = None
        self.watchers = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def publish(self, value: V) -> None:
        self.value, self.seq = value, self.seq + 1
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.ended, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        # Waiters take a fresh Event each round (see _Watcher), so setting wakes exactly the
        # watchers waiting now; the next round waits on a new Event.
        self.changed.set()
        self.changed = asyncio.Event()


class Fanout(Generic[K, V]):
    """Shares one ``source(key)`` among all watchers of ``key`` in this process."""

    def __init__(self, source: Callable[[K], AsyncIterator[V]], *, name: str = "fanout") -> None:
        self._source = source
        self._name = name
        self._feeds: dict[K, _Feed[V]] = {}

    def watchers(self, key: K) -> int:
        """How many watchers ``key`` has now (0 when nobody watches it)."""
        feed = self._feeds.get(key)
        return feed.watchers if feed else 0

    def producers(self) -> int:
        """How many producers run now (one per watched key)."""
        return len(self._feeds)

    async def watch(self, key: K) -> AsyncIterator[V]:
        """The values of ``key`` as described in the module docstring."""
        feed = self._feeds.get(key)
        if feed is None or feed.ended:
            feed = self._feeds[key] = _Feed()
            # A fresh context: the producer serves every watcher, so it must not carry the first
            # one's call (its deadline budget, principal and request id end with that call).
            feed.task = asyncio.create_task(self._produce(key, feed), name=f"{self._name}:{key}",
                                            context=contextvars.Context())
        feed.watchers += 1
        try:
            seen = 0
            while True:
                if feed.seq > seen:
                    seen = feed.seq
                    yield feed.value  # type: ignore[misc]  # seq > 0: a value was published
                    continue
                if feed.ended:
                    if feed.error is not None:
                        raise feed.error
                    return
                await feed.changed.wait()
        finally:
            feed.watchers -= 1
            if feed.watchers == 0:
                self._drop(key, feed)

    def _drop(self, key: K, feed: _Feed[V]) -> None:
        """The last watcher left: stop the producer and forget the key."""
        if self._feeds.get(key) is feed:
            del self._feeds[key]
        if feed.task is not None and not feed.task.done():
            feed.task.cancel()

    async def _produce(self, key: K, feed: _Feed[V]) -> None:
        try:
            async for value in self._source(key):
                feed.publish(value)
        except asyncio.CancelledError:
            feed.finish(None)
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every watcher, which raises it
            log.debug("fan-out source for %r failed", key, exc_info=True)
            feed.finish(exc)
        else:
            feed.finish(None)
        finally:
            if self._feeds.get(key) is feed and feed.watchers == 0:
                del self._feeds[key]
