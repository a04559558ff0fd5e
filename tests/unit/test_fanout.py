"""``runtime.fanout.Fanout``: one producer per key shared by every watcher of that key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pylon_services.runtime.fanout import Fanout


class Source:
    """Counts producers; each yields the values put on its key's queue until None."""

    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.queues: dict[str, asyncio.Queue[int | None]] = {}
        self.stopped: list[str] = []

    async def __call__(self, key: str) -> AsyncIterator[int]:
        self.started[key] = self.started.get(key, 0) + 1
        q = self.queues.setdefault(key, asyncio.Queue())
        try:
            while (value := await q.get()) is not None:
                yield value
        finally:
            self.stopped.append(key)


def test_five_hundred_watchers_share_one_producer_and_all_see_the_last_value() -> None:
    async def main() -> None:
        source = Source()
        fanout: Fanout[str, int] = Fanout(source)
        seen: list[list[int]] = [[] for _ in range(500)]

        async def watcher(i: int) -> None:
            async for v in fanout.watch("op1"):
                seen[i].append(v)

        tasks = [asyncio.create_task(watcher(i)) for i in range(500)]
        await asyncio.sleep(0.05)
        assert source.started == {"op1": 1} and fanout.watchers("op1") == 500 and fanout.producers() == 1
        q = source.queues["op1"]
        for v in (1, 2, 3):
            await q.put(v)
            await asyncio.sleep(0.01)
        await q.put(None)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert all(s == [1, 2, 3] for s in seen)
        assert fanout.producers() == 0 and fanout.watchers("op1") == 0

    asyncio.run(main())


def test_a_late_watcher_gets_the_newest_value_and_a_slow_one_the_last() -> None:
    async def main() -> None:
        source = Source()
        fanout: Fanout[str, int] = Fanout(source)
        early = fanout.watch("k")
        first = asyncio.create_task(early.__anext__())  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        q = source.queues["k"]
        await q.put(1)
        assert await first == 1
        for v in (2, 3, 4):  # the early watcher does not read meanwhile: it will skip to the newest
            await q.put(v)
        await asyncio.sleep(0.01)
        late = fanout.watch("k")
        assert await late.__anext__() == 4
        assert await early.__anext__() == 4
        await q.put(None)
        with pytest.raises(StopAsyncIteration):
            await late.__anext__()
        with pytest.raises(StopAsyncIteration):
            await early.__anext__()
        assert source.started == {"k": 1}

    asyncio.run(main())


def test_the_last_watcher_leaving_stops_the_producer_and_errors_reach_everyone() -> None:
    async def main() -> None:
        source = Source()
        fanout: Fanout[str, int] = Fanout(source)

        async def take_one() -> int:
            async for v in fanout.watch("k"):
                return v
            return -1

        task = asyncio.create_task(take_one())
        await asyncio.sleep(0.01)
        await source.queues["k"].put(7)
        assert await task == 7
        await asyncio.sleep(0.01)
        assert source.stopped == ["k"] and fanout.producers() == 0

        async def broken(key: str) -> AsyncIterator[int]:
            yield 1
            raise RuntimeError("source failed")

        failing: Fanout[str, int] = Fanout(broken)

        async def drain() -> list[int]:
            return [v async for v in failing.watch("x")]

        results = await asyncio.gather(drain(), drain(), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(main())
