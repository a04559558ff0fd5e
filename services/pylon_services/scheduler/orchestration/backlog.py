"""The leader's in-memory copy of the pending queue, kept up to date incrementally.

Reading and JSON-decoding every pending job on every pass made passes cost O(backlog) in Redis
I/O and decoding alone (the bulk of a pass over 20k queued jobs). A pending job's document only
changes through ``JobLedger.create`` (which appends a ``submitted`` event to the dispatch stream in
the same script) or ``JobLedger.save_moved`` (the leader's own writes, which the store records, or
a cancel, which appends a ``changed`` event in the same transaction). So the leader re-reads only
the keys those name, and checks their queue membership with one ZMSCORE.

Keys named by ``submitted`` events are *arrivals* (``arrive``): the backlog also tells the leader
which jobs joined it since the last pass and whether anything else changed meanwhile
(``take_arrivals``), so an append pass can decide just those (``passes.py``).

A full re-read every ``resync_s`` (and on taking the lease) bounds the effect of anything that
wrote around these paths. A stale entry can never corrupt the ledger: every leader write is a
compare-and-swap on the job's ``version``; the worst it can do is skew one pass's decisions.
"""

from __future__ import annotations

from collections.abc import Iterable

from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.ports import Clock, JobLedger
from pylon_services.scheduler.domain.scheduling import PendingJob
from pylon_services.scheduler.domain.snapshot import pending_of


class Backlog:
    def __init__(self, jobs: JobLedger, resync_s: float, clock: Clock) -> None:
        self.jobs = jobs
        self.resync_s = resync_s
        self.clock = clock
        self._pending: dict[str, Job] = {}
        # The policy's view of each pending job, converted once per version of the job.
        self._rows: dict[str, tuple[tuple[float, str], PendingJob]] = {}
        self._order: tuple[PendingJob, ...] | None = None
        self._dirty: set[str] = set()
        self._arrived: set[str] = set()
        # Since the last ``take_arrivals``: keys that joined the backlog, and whether anything
        # else happened to it (a job left or changed, a full re-read).
        self._added: list[str] = []
        self._other = True
        self._synced_at = float("-inf")
        self.decoded = 0  # jobs decoded so far (for tests and benchmarks)

    def mark(self, keys: Iterable[str]) -> None:
        """These jobs may have changed: re-read them before the next pass."""
        self._dirty.update(keys)

    def arrive(self, keys: Iterable[str]) -> None:
        """These jobs were just submitted: read them before the next pass."""
        self._arrived.update(keys)

    @property
    def arrived(self) -> bool:
        """Whether submitted jobs wait to be read."""
        return bool(self._arrived)

    def take_arrivals(self) -> list[PendingJob] | None:
        """The jobs that joined the backlog since the last call, in submit order, or None when
        anything else changed in it meanwhile (then only a whole pass will do); starts over."""
        added, other = self._added, self._other
        self._added, self._other = [], False
        if other:
            return None
        rows = [self._rows[k] for k in added if k in self._rows]
        return [row for _, row in sorted(rows, key=lambda r: r[0])]

    def invalidate(self) -> None:
        """Re-read everything before the next pass (a new leader, or suspected drift)."""
        self._synced_at = float("-inf")

    @property
    def size(self) -> int:
        return len(self._pending)

    @property
    def changed(self) -> bool:
        """Whether anything is known to have changed since the last ``pending()``."""
        return bool(self._dirty) or self.jobs.touched_any()

    async def pending(self) -> dict[str, Job]:
        """The pending jobs by ``tenant/id`` (read-only for the caller; ``rows()`` has their
        policy view in submit order)."""
        self._dirty |= self.jobs.drain_touched()
        if self.clock.monotonic() - self._synced_at >= self.resync_s:
            self._dirty.clear()
            self._arrived.clear()
            await self._full()
        elif self._dirty or self._arrived:
            changed, arrived = self._dirty, self._arrived - self._dirty
            self._dirty, self._arrived = set(), set()
            await self._refresh(sorted(changed | arrived), arrived)
        return self._pending

    def rows(self) -> tuple[PendingJob, ...]:
        """What ``pending()`` returned, as the policy's ``PendingJob``s in submit order (the
        order ``build_snapshot`` uses), re-sorted only after the set changed."""
        if self._order is None:
            self._order = tuple(row for _, row in sorted(self._rows.values(), key=lambda r: r[0]))
        return self._order

    def _put(self, job: Job) -> None:
        self._pending[job.key] = job
        self._rows[job.key] = ((job.queued_at, job.id), pending_of(job))

    async def _full(self) -> None:
        self._synced_at = self.clock.monotonic()
        self._other = True
        jobs = await self.jobs.get_many(await self.jobs.pending_keys())
        self.decoded += len(jobs)
        self._pending, self._rows, self._order = {}, {}, None
        for j in jobs:
            if j.state == JobState.PENDING:
                self._put(j)

    async def _refresh(self, keys: list[str], arrived: set[str]) -> None:
        queued = await self.jobs.queued(keys)
        self._order = None
        for k in keys:
            if self._pending.pop(k, None) is not None or k not in arrived:
                self._other = True  # a job that was waiting changed or left (or may have)
            self._rows.pop(k, None)
        jobs = await self.jobs.get_many([k for k, q in zip(keys, queued, strict=True) if q])
        self.decoded += len(jobs)
        for j in jobs:
            if j.state == JobState.PENDING:
                self._put(j)
                if j.key in arrived:
                    self._added.append(j.key)
