"""WatchJob and StreamLogs (a mixin of the servicer): server streams over shared pollers.

Every stream of one job in this process shares one poller (``runtime.fanout.Fanout``, as ingest's
WatchOperation does): 500 watchers of a job cost one Redis read per period, not 500. A log
follower first reads what it missed from its own offset, then takes the lines the shared poller
read; it reads directly again only when it fell behind (a slow client skips intermediate
publications).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from pylon.scheduler.v1 import scheduler_pb2 as pb
from pylon_services.runtime.context import principal
from pylon_services.runtime.fanout import Fanout
from pylon_services.runtime.protoconv import ts
from pylon_services.scheduler.api import inputs
from pylon_services.scheduler.api.convert import job_to_pb
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.ports import JobLedger

POLL_S = 0.25  # how often a shared poller reads a watched job
LOG_PAGE = 1000  # lines one ``JobLedger.logs`` call returns at most
LOG_READS_PER_POLL = 10
MAX_LOG_RESPONSE_BYTES = 1 << 20  # text per StreamLogsResponse, well under the message limit
MAX_LOG_LINE_CHARS = 64 * 1024  # a longer line is cut (a worker's output, not bounded where written)


@dataclass(frozen=True)
class LogTick:
    """What the shared log poller saw: the job, and the lines from index ``start`` on that
    appeared since its previous look."""

    job: Job
    start: int
    lines: tuple[dict[str, Any], ...]


def _watched(job: Job) -> tuple[Any, ...]:
    return job.state, job.message, job.attempt


def log_responses(offset: int, lines: list[dict[str, Any]] | tuple[dict[str, Any], ...]
                  ) -> Iterator[pb.StreamLogsResponse]:
    """``lines`` (the first at index ``offset``) as responses of at most about a MiB each."""
    batch: list[pb.LogLine] = []
    size = 0
    for i, x in enumerate(lines):
        text = str(x.get("text", ""))
        if len(text) > MAX_LOG_LINE_CHARS:
            text = text[:MAX_LOG_LINE_CHARS] + f" [... {len(text) - MAX_LOG_LINE_CHARS} more characters]"
        if batch and size + len(text) > MAX_LOG_RESPONSE_BYTES:
            yield pb.StreamLogsResponse(lines=batch)
            batch, size = [], 0
        batch.append(pb.LogLine(index=offset + i, text=text, attempt=int(x.get("attempt", 0)), time=ts(x.get("t", 0))))
        size += len(text) + 32
    if batch:
        yield pb.StreamLogsResponse(lines=batch)


@dataclass(frozen=True)
class LogKey:
    """The key of a job's shared log poller. ``start`` (where the poller begins reading) is the
    first follower's offset and takes no part in equality: later followers share that poller
    and read any gap before it directly."""

    tenant: str
    job_id: str
    start: int = field(compare=False, hash=False)


class JobStreams:
    _jobs: JobLedger

    def _init_streams(self, poll_s: float = POLL_S) -> None:
        self._poll_s = poll_s
        self._job_feeds: Fanout[tuple[str, str], Job] = Fanout(self._job_source, name="watch-job")
        self._log_feeds: Fanout[LogKey, LogTick] = Fanout(self._log_source, name="follow-logs")

    async def WatchJob(self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[pb.WatchJobResponse]:
        tenant, job_id = inputs.job_name("name", request.name, principal())
        last = None
        async for job in self._job_feeds.watch((tenant, job_id)):
            if _watched(job) != last:
                last = _watched(job)
                yield pb.WatchJobResponse(job=job_to_pb(job))

    async def StreamLogs(self, request: pb.StreamLogsRequest, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[pb.StreamLogsResponse]:
        tenant, job_id = inputs.job_name("name", request.name, principal())
        offset = inputs.log_offset(request.offset)
        job = await self._jobs.get(tenant, job_id)
        while lines := await self._jobs.logs(tenant, job_id, offset):
            for resp in log_responses(offset, lines):
                yield resp
            offset += len(lines)
        if not request.follow or job.state.terminal:
            return
        async for tick in self._log_feeds.watch(LogKey(tenant, job_id, offset)):
            while offset < tick.start:  # fell behind the shared poller: read the gap directly
                lines = (await self._jobs.logs(tenant, job_id, offset))[:tick.start - offset]
                if not lines:
                    break
                for resp in log_responses(offset, lines):
                    yield resp
                offset += len(lines)
            end = tick.start + len(tick.lines)
            if tick.start <= offset < end:
                for resp in log_responses(offset, tick.lines[offset - tick.start:]):
                    yield resp
                offset = end
        while lines := await self._jobs.logs(tenant, job_id, offset):  # a poller's last look may stop short
            for resp in log_responses(offset, lines):
                yield resp
            offset += len(lines)

    async def _job_source(self, key: tuple[str, str]) -> AsyncIterator[Job]:
        """The job each time what a watcher sees of it changes; ends once it is terminal."""
        last = None
        while True:
            job = await self._jobs.get(*key)
            if _watched(job) != last:
                last = _watched(job)
                yield job
            if job.state.terminal:
                return
            await asyncio.sleep(self._poll_s)

    async def _log_source(self, key: LogKey) -> AsyncIterator[LogTick]:
        """Reads the job, then the lines after the last it saw (the job first: once it reads
        terminal, the lines read after it are the last ones); yields a tick when lines came or
        the state changed, and ends once the job is terminal."""
        count, state = key.start, None
        while True:
            job = await self._jobs.get(key.tenant, key.job_id)
            lines: list[dict[str, Any]] = []
            for _ in range(LOG_READS_PER_POLL):
                got = await self._jobs.logs(key.tenant, key.job_id, count + len(lines))
                lines += got
                if len(got) < LOG_PAGE:
                    break
            if lines or job.state != state:
                state = job.state
                yield LogTick(job, count, tuple(lines))
            count += len(lines)
            if job.state.terminal:
                return
            await asyncio.sleep(self._poll_s)
