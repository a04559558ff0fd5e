"""The scheduler's Redis keys, in one place: the leader, the API and the Ray workers all use them.

Ledger: ``pylon:job:{tenant}:{id}`` (JSON), ``pylon:jobs:{tenant}`` (zset by create time),
``pylon:jobreq:{tenant}:{request_id}`` (idempotent submit), ``pylon:pending`` (zset, FIFO by
submit time), ``pylon:pending:{tenant}`` (the tenant's share of it: the per-tenant pending limit
counts it), ``pylon:active`` (set of ``tenant/id`` holding resources). Per job:
``pylon:joblog:...`` (list of JSON lines), ``pylon:jobmetrics:...``,
``pylon:jobresults:{tenant}:{id}:{attempt}`` (hash rank -> result JSON, written by workers),
``pylon:jobstop:...`` / ``pylon:jobpreempt:...`` (flags workers poll),
``pylon:rdzv:{tenant}:{id}:{attempt}`` (rank 0's ``addr:port`` for torch.distributed, a day's TTL).
Beside it (``redis_sched.py``): queues, usage, throughput, explanations, the cluster view and the
dispatch stream ``pylon:sched:events``; the leader lease ``pylon:scheduler:leader``.
"""

from __future__ import annotations

PENDING = "pylon:pending"
ACTIVE = "pylon:active"
EVENTS = "pylon:sched:events"
# Streams are trimmed to about this many entries (acknowledged history is not needed).
EVENTS_MAXLEN = 100_000
LEASE = "pylon:scheduler:leader"


def tenant_pending_key(tenant: str) -> str:
    """The tenant's pending jobs (``tenant/id``): every write that moves a job in or out of
    ``PENDING`` moves it here in the same transaction, so its size is the tenant's backlog."""
    return f"pylon:pending:{tenant}"


def job_key(tenant: str, job_id: str) -> str:
    return f"pylon:job:{tenant}:{job_id}"


def tenant_jobs_key(tenant: str) -> str:
    return f"pylon:jobs:{tenant}"


def log_key(tenant: str, job_id: str) -> str:
    return f"pylon:joblog:{tenant}:{job_id}"


def metrics_key(tenant: str, job_id: str) -> str:
    return f"pylon:jobmetrics:{tenant}:{job_id}"


def results_key(tenant: str, job_id: str, attempt: int) -> str:
    return f"pylon:jobresults:{tenant}:{job_id}:{attempt}"


def stop_key(tenant: str, job_id: str) -> str:
    return f"pylon:jobstop:{tenant}:{job_id}"


def preempt_key(tenant: str, job_id: str) -> str:
    return f"pylon:jobpreempt:{tenant}:{job_id}"


def rendezvous_key(tenant: str, job_id: str, attempt: int) -> str:
    """Where rank 0 of one job attempt publishes ``addr:port`` for the gang's torch.distributed
    (per attempt: a retried gang never dials the address of the attempt before)."""
    return f"pylon:rdzv:{tenant}:{job_id}:{attempt}"


RENDEZVOUS_TTL_S = 86_400


def queue_key(name: str) -> str:
    """Of a queue named ``tenants/{t}/queues/{q}``."""
    _, tenant, _, queue = name.split("/")
    return f"pylon:queue:{tenant}:{queue}"
