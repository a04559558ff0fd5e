"""Handling the dispatch stream's events: what each one means for the backlog and the attempts.

The stream (``pylon:sched:events``) is read as the consumer group ``scheduler``; an entry is
acknowledged only after it was handled, so a leader that dies mid-turn leaves its entries to the
next one (at-least-once). Handlers are idempotent: they act on the ledger's current attempt only,
so an event of an attempt that is already over does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pylon_services.common.errors import NotFound
from pylon_services.scheduler.domain.ports import Event, JobLedger, SchedulerState
from pylon_services.scheduler.orchestration.attempts import Attempts
from pylon_services.scheduler.orchestration.backlog import Backlog

log = logging.getLogger("pylon.scheduler")
# Events that only add jobs to the backlog (an append pass may take them); any other event is a
# change only a whole pass takes in.
ARRIVALS = frozenset({"submitted"})


class Dispatcher:
    def __init__(self, jobs: JobLedger, state: SchedulerState, backlog: Backlog, attempts: Attempts) -> None:
        self.jobs, self.state, self.backlog, self.attempts = jobs, state, backlog, attempts

    async def handle(self, events: Sequence[Event]) -> None:
        """Handle each event, then acknowledge those handled (a failed one is retried later)."""
        done = []
        for eid, event in events:
            try:
                await self.handle_one(event)
            except Exception:  # noqa: BLE001 - left unacknowledged: reclaimed and retried later
                log.exception("handling dispatch entry %s failed", eid)
                continue
            done.append(eid)
        await self.state.ack(done)

    async def handle_one(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "submitted":
            self.backlog.arrive([event["job"]])  # read before the next pass
            return
        if kind == "changed":
            self.backlog.mark([event["job"]])  # re-read before the next pass
            return
        if kind not in ("result", "progress"):
            return  # "queue" and unknown types: only the pass they make due matters
        tenant, job_id = event["job"].split("/", 1)
        try:
            job = await self.jobs.get(tenant, job_id)
        except NotFound:
            return
        if job.attempt != int(event.get("attempt", -1)):
            return  # an event of an attempt that is already over
        if kind == "result":
            await self.attempts.track(job)
        else:
            await self.attempts.progress(job, event)


def changes_beyond_arrivals(events: Sequence[Event]) -> bool:
    """Whether ``events`` hold anything besides submissions."""
    return any(event.get("type") not in ARRIVALS for _, event in events)
