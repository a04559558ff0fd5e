"""The ports the scheduler's orchestration and API depend on; adapters live in ``store/``.

``JobLedger`` is the job store (Redis: ``store/redis_jobs.py``), ``SchedulerState`` what sits
beside it (queues, usage, throughput, explanations, the dispatch stream and the published cluster
view: ``store/redis_sched.py``), ``ClusterExecutor`` runs attempts (Ray: ``store/ray_exec.py``),
``Lease`` elects the leader (``store/redis_lease.py``), ``Clock`` tells time. Unit tests drive the
leader with in-memory fakes of these (``tests/unit/sched_fakes.py``) and a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.scheduling import Explanation, QueueQuota
from pylon_services.scheduler.domain.snapshot import ClusterNode, ClusterView
from pylon_services.scheduler.domain.throughput import ThroughputTable

# One dispatch-stream entry: (entry id, event), the event a dict with at least "type".
Event = tuple[str, dict[str, Any]]


class Clock(Protocol):
    def time(self) -> float:
        """Wall clock, unix seconds (stored timestamps)."""

    def monotonic(self) -> float:
        """For intervals and pacing."""

    def cpu(self) -> float:
        """This process's CPU seconds (pass cost statistics)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def cpu(self) -> float:
        return time.process_time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class JobLedger(Protocol):
    """Jobs, their queue and active-set membership, results, logs and control flags. Every
    state change is a compare-and-swap on ``Job.version`` (``save_moved``)."""

    async def create(self, job: Job, require_queue: str = "") -> tuple[Job, bool]:
        """Store and queue a new job atomically; with a request id, the job that id already
        created instead (created=False). ``require_queue``: a queue name that must exist."""

    async def get(self, tenant: str, job_id: str) -> Job: ...

    async def get_many(self, keys: Sequence[str]) -> list[Job]:
        """Jobs by ``tenant/id``; vanished ones are skipped."""

    async def save_moved(self, job: Job, *, pending: bool, active: bool, notify: bool = False) -> bool:
        """Compare-and-swap ``job`` and set its pending/active membership in one transaction;
        False (nothing written) when someone changed it first. ``notify`` appends a ``changed``
        event to the dispatch stream in the same transaction."""

    async def pending_keys(self) -> list[str]: ...

    async def pending_scored(self) -> list[tuple[str, float]]: ...

    async def queued(self, keys: Sequence[str]) -> list[bool]: ...

    async def active_keys(self) -> list[str]: ...

    async def active(self) -> list[Job]:
        """Jobs holding (or about to hold) resources, not terminal."""

    async def attempt_results(self, job: Job) -> dict[int, dict[str, Any]]:
        """What the workers of the job's current attempt reported, by rank."""

    async def list_jobs(self, tenant: str, page_size: int, page_token: str,
                        states: Iterable[JobState] = (), max_bytes: int = 0) -> tuple[list[Job], str]:
        """Newest first, only ``states`` when given, a page ending early once its stored jobs
        reach ``max_bytes`` (0: no bound); ("" when no more pages)."""

    async def logs(self, tenant: str, job_id: str, offset: int) -> list[dict[str, Any]]:
        """Log lines from ``offset`` on (at most a thousand), as {"text", "attempt", "t"}."""

    async def tail(self, tenant: str, job_id: str, n: int) -> list[str]: ...

    async def metrics(self, tenant: str, job_id: str) -> list[dict[str, Any]]:
        """Every reported point, as {"key", "step", "value", "t"}."""

    def touched_any(self) -> bool:
        """Whether this process wrote jobs since the last ``drain_touched``."""

    def drain_touched(self) -> set[str]: ...

    async def request_stop(self, job: Job) -> None:
        """Raise the flag the job's workers poll: end now (cancel)."""

    async def request_preempt(self, job: Job, grace_s: float) -> None:
        """Raise the flag the job's workers poll: checkpoint and exit within ``grace_s``."""

    async def clear_preempt(self, job: Job) -> None: ...


class SchedulerState(Protocol):
    """Queues and quotas, fair-share usage, the throughput table, explanations, the dispatch
    stream and the cluster view the leader publishes."""

    async def queues(self) -> dict[str, QueueQuota]: ...

    async def create_queue(self, q: QueueQuota) -> QueueQuota: ...

    async def update_queue(self, q: QueueQuota) -> QueueQuota: ...

    async def usage(self) -> dict[str, float]: ...

    async def add_usage(self, gpus_by_tenant: Mapping[str, float], half_life_s: float) -> dict[str, float]: ...

    async def throughput(self) -> ThroughputTable: ...

    async def save_throughput(self, table: ThroughputTable) -> None: ...

    async def save_explanations(self, by_key: dict[str, Explanation], *, merge: bool = False) -> None: ...

    def forget_explanations(self) -> None: ...

    async def explanation(self, key: str) -> Explanation | None: ...

    async def ensure_group(self) -> None: ...

    async def read_events(self, consumer: str, block_ms: int, count: int = 200) -> list[Event]: ...

    async def reclaim(self, consumer: str, min_idle_ms: int) -> list[Event]: ...

    async def pending_of(self, consumer: str) -> list[Event]: ...

    async def ack(self, ids: Sequence[str]) -> None: ...

    async def publish_cluster(self, view: ClusterView) -> None: ...

    async def cluster(self) -> ClusterView | None: ...


class ClusterExecutor(Protocol):
    """Runs job attempts as named, detached groups of workers (Ray placement groups), so a
    restarted leader finds and adopts them, and a repeated launch starts nothing twice."""

    async def nodes(self) -> list[ClusterNode]:
        """Every node the cluster knows, alive or not (may be a second old)."""

    def attempt_name(self, job: Job) -> str: ...

    async def launch(self, job: Job, wait_s: float = 1.0) -> int:
        """Reserve the attempt's resources unless reserved, and start the workers whose share
        is placed unless started; waits at most ``wait_s``. Returns how many run or started."""

    async def placed_nodes(self, job: Job) -> list[str] | None:
        """Node of each worker once every share of the attempt is placed, else None."""

    async def exists(self, job: Job) -> bool:
        """Whether the attempt's reservation is still there."""

    async def workers_alive(self, job: Job) -> tuple[str, dict[int, str]]:
        """("" or why not every worker runs, {rank: error of each crashed worker})."""

    async def release(self, job: Job) -> None:
        """Stop the attempt's workers and free its resources (idempotent)."""

    async def orphans(self, wanted: set[str]) -> list[str]:
        """Names of reservations no attempt in ``wanted`` owns."""

    async def remove(self, name: str) -> None: ...

    async def request_scale(self, bundles: list[dict[str, float]]) -> None:
        """Ask the autoscaler for room for ``bundles`` (replaces the last request)."""


class ModelRegistrar(Protocol):
    """Registers a succeeded trainer job's output as a model version (the registry, as the
    platform). Idempotent per job: a repeated call returns the version the first one made."""

    async def register(self, job: Job) -> str:
        """The new version's name; raises when the registry refuses or cannot be reached."""
        ...


class Lease(Protocol):
    """Who leads: a lease with a time to live that only its holder may renew or give back."""

    async def hold(self, identity: str, ttl_s: float) -> bool:
        """Take the lease if free or renew it if ``identity`` holds it; True when held."""

    async def give_back(self, identity: str) -> None: ...
