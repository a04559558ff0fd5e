"""One poller per watched thing per process, shared by every stream that watches it.

``WatchJob`` and ``StreamLogs --follow`` used to poll Redis once per stream: 500 watchers of one
job made 2,000 reads a second and exhausted the connection pool. Now the first subscriber of a
key starts a poller task; every subscriber of that key gets the values it publishes; the poller
stops when its value is final or when the last subscriber leaves.

Streams depend only on ``Fanout`` (the Protocol below); ``PollingFanout`` is this process's
implementation. A generic per-process fan-out in ``runtime/`` can replace it by implementing
``subscribe`` (see the scheduler servicer's constructor, which takes any ``Fanout``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class Fanout(Protocol):
    """Shared watching: values of ``poll()`` under ``key``, one poller however many subscribe."""

    def subscribe(self, key: str, poll: Callable[[], Awaitable[T]], *,
                  changed: Callable[[T, T], bool], final: Callable[[T], bool]) -> AsyncIterator[T]:
        """The latest value at once (when there is one), then each value that ``changed`` from
        the one published before; ends after a ``final`` value. An error of ``poll`` reaches
        every subscriber. A subscriber that falls behind gets the latest value, not every one."""


class _Topic(Generic[T]):
    __slots__ = ("value", "seq", "error", "closed", "wake", "subscribers", "task")

    def __init__(self) -> None:
        self.value: T | None = None
        self.seq = 0  # values published so far
        self.error: BaseException | None = None
        self.closed = False
        self.wake = asyncio.Event()  # replaced after each publication
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None

    def publish(self) -> None:
        wake, self.wake = self.wake, asyncio.Event()
        wake.set()


class PollingFanout:
    """``Fanout`` by polling every ``period_s`` (on this process's event loop)."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self._topics: dict[str, _Topic[Any]] = {}

    def pollers(self) -> int:
        """Pollers running now (for tests and metrics)."""
        return sum(1 for t in self._topics.values() if not t.closed)

    async def subscribe(self, key: str, poll: Callable[[], Awaitable[T]], *,
                        changed: Callable[[T, T], bool], final: Callable[[T], bool]) -> AsyncIterator[T]:
        topic: _Topic[T] | None = self._topics.get(key)
        if topic is None or topic.closed:
            topic = _Topic()
            self._topics[key] = topic
            topic.task = asyncio.create_task(self._poll(key, topic, poll, changed, final))
        topic.subscribers += 1
        seen = 0
        try:
            while True:
                if topic.seq > seen:
                    seen = topic.seq
                    value = topic.value
                    assert value is not None
                    yield value
                    if final(value):
                        return
                elif topic.closed:
                    if topic.error is not None:
                        raise topic.error
                    return
                else:
                    await topic.wake.wait()
        finally:
            topic.subscribers -= 1
            if topic.subscribers == 0 and not topic.closed:
                self._close(key, topic)
                if topic.task is not None:
                    topic.task.cancel()

    def _close(self, key: str, topic: _Topic[Any]) -> None:
        topic.closed = True
        if self._topics.get(key) is topic:
            del self._topics[key]
        topic.publish()

    async def _poll(self, key: str, topic: _Topic[T], poll: Callable[[], Awaitable[T]],
                    changed: Callable[[T, T], bool], final: Callable[[T], bool]) -> None:
        try:
            while not topic.closed:
                value = await poll()
                if topic.seq == 0 or changed(topic.value, value):  # type: ignore[arg-type]
                    topic.value = value
                    topic.seq += 1
                    topic.publish()
                if final(value):
                    break
                await asyncio.sleep(self.period_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed to every subscriber, which raises it
            topic.error = e
        finally:
            with contextlib.suppress(Exception):
                self._close(key, topic)
