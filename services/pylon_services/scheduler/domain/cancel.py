"""Cancelling a job: the one use case the API runs on the ledger besides submit."""

from __future__ import annotations

from pylon_services.common.errors import FailedPrecondition
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.ports import JobLedger

CANCEL_TRIES = 20


async def cancel_job(ledger: JobLedger, job: Job) -> Job:
    """Mark the job CANCELLED (compare-and-swap, so a concurrent finish wins or loses cleanly)
    and raise its stop flag; the leader then stops its workers and frees its resources."""
    for _ in range(CANCEL_TRIES):
        if job.state.terminal:
            raise FailedPrecondition(f"job {job.name} already {job.state.value}; nothing to cancel")
        holding = job.state != JobState.PENDING
        await ledger.request_stop(job)
        job.transition(JobState.CANCELLED, "cancelled by user")
        if await ledger.save_moved(job, pending=False, active=holding, notify=True):
            return job
        job = await ledger.get(job.tenant, job.id)
    raise FailedPrecondition(f"job {job.name} kept changing; try again")
