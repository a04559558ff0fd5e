"""WatchJob and StreamLogs at scale through the real platform: hundreds of streams of one job all
get its events, and they share one poll of Redis instead of one each."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
import pytest
import redis

from pylon.scheduler.v1 import scheduler_pb2 as spb
from pylon.scheduler.v1 import scheduler_pb2_grpc

pytestmark = pytest.mark.integration

WATCHERS = 500


def _calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


async def _watch_all(address: str, token: str, name: str, n: int) -> list[list[Any]]:
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

        async def one() -> list[Any]:
            return [r.job.status.state async for r in stub.WatchJob(spb.WatchJobRequest(name=name), metadata=md,
                                                                     timeout=120)]

        return await asyncio.gather(*(one() for _ in range(n)))


async def _follow_all(address: str, token: str, name: str, n: int) -> list[list[tuple[int, str]]]:
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

        async def one() -> list[tuple[int, str]]:
            out = []
            async for r in stub.StreamLogs(spb.StreamLogsRequest(name=name, follow=True), metadata=md, timeout=120):
                out += [(x.index, x.text) for x in r.lines]
            return out

        return await asyncio.gather(*(one() for _ in range(n)))


def test_500_watchers_of_one_job_all_get_its_events_from_one_poll(tenant_clients, platform, redis_client):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"command": {"argv": ["sleep", "3"]}})
    gets = _calls(redis_client, "get")
    results = asyncio.run(_watch_all(platform.addresses["scheduler"], acme.token, job.name, WATCHERS))
    gets = _calls(redis_client, "get") - gets
    assert len(results) == WATCHERS
    assert all(r and r[-1] == spb.JOB_STATE_SUCCEEDED for r in results), [r for r in results if not r][:3]
    assert all(len(r) == len(set(r)) for r in results)  # each state once
    # One shared poll every 0.25 s for the few seconds the job ran (and the leader's own reads);
    # a poll per watcher was about 500 x 4 reads a second.
    assert gets < 600, gets


def test_log_followers_of_one_job_all_get_every_line_in_order(tenant_clients, platform, redis_client):
    acme = tenant_clients["acme"]
    script = "import time\nfor i in range(30):\n    print(f'line-{i}', flush=True)\n    time.sleep(0.05)\n"
    job = acme.jobs.submit({"command": {"argv": [sys.executable, "-c", script]}})
    reads = _calls(redis_client, "lrange")
    results = asyncio.run(_follow_all(platform.addresses["scheduler"], acme.token, job.name, 100))
    reads = _calls(redis_client, "lrange") - reads
    for lines in results:
        texts = [t for _, t in lines if t.startswith("line-")]
        assert texts == [f"line-{i}" for i in range(30)]
        assert [i for i, _ in lines] == list(range(len(lines)))
    assert reads < 100 * 4 + 200, reads  # a catch-up read and a last read per follower, plus the shared polls
