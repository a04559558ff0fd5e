"""The scheduler API's shared pollers (``api/fanout.py``): one poll per key however many watch."""

from __future__ import annotations

import asyncio

import pytest

from pylon_services.scheduler.api.fanout import PollingFanout


class Source:
    """A value that moves through ``values``, one step per poll, counting the polls."""

    def __init__(self, values: list[int]) -> None:
        self.values = values
        self.polls = 0

    async def poll(self) -> int:
        self.polls += 1
        return self.values[min(self.polls, len(self.values)) - 1]


async def _collect(feeds: PollingFanout, source: Source, key: str = "k") -> list[int]:
    return [v async for v in feeds.subscribe(key, source.poll, changed=lambda a, b: a != b, final=lambda v: v >= 9)]


def test_many_subscribers_share_one_poller_and_all_see_the_final_value():
    async def main() -> None:
        feeds = PollingFanout(0.01)
        source = Source([1, 1, 2, 2, 3, 9])
        results = await asyncio.gather(*(_collect(feeds, source) for _ in range(200)))
        assert all(r[-1] == 9 for r in results)
        assert all(r == sorted(set(r)) for r in results)  # only changes, in order
        assert source.polls == 6  # one poller, not 200
        assert feeds.pollers() == 0

    asyncio.run(main())


def test_the_poller_stops_when_the_last_subscriber_leaves():
    async def main() -> None:
        feeds = PollingFanout(0.01)
        source = Source([1, 2, 3, 4, 5, 6, 7, 8])  # never final

        async def first_two() -> list[int]:
            out = []
            async for v in feeds.subscribe("k", source.poll, changed=lambda a, b: a != b, final=lambda v: False):
                out.append(v)
                if len(out) == 2:
                    break
            return out

        assert await first_two() == [1, 2]
        await asyncio.sleep(0.05)
        polls = source.polls
        await asyncio.sleep(0.05)
        assert source.polls == polls and feeds.pollers() == 0

    asyncio.run(main())


def test_an_error_of_the_poll_reaches_every_subscriber_and_a_new_subscriber_polls_again():
    async def main() -> None:
        feeds = PollingFanout(0.01)
        calls = 0

        async def failing() -> int:
            nonlocal calls
            calls += 1
            raise LookupError("gone")

        async def one() -> list[int]:
            return [v async for v in feeds.subscribe("k", failing, changed=lambda a, b: a != b, final=lambda v: True)]

        results = await asyncio.gather(*(one() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, LookupError) for r in results) and calls == 1
        with pytest.raises(LookupError):
            await one()
        assert calls == 2

    asyncio.run(main())


def test_keys_are_separate():
    async def main() -> None:
        feeds = PollingFanout(0.01)
        a, b = Source([1, 9]), Source([5, 9])
        ra, rb = await asyncio.gather(_collect(feeds, a, "a"), _collect(feeds, b, "b"))
        assert (ra, rb) == ([1, 9], [5, 9])

    asyncio.run(main())
