"""In-memory fakes of the scheduler's own ports (``scheduler/domain/ports.py``) and a fake clock,
so the leader's loop runs in unit tests without Redis, Ray or real time. They keep the contracts
the real adapters keep (compare-and-swap on ``Job.version``, consumer-group acknowledgement,
idempotent launch and release); the adapters themselves are tested against Redis and Ray."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylon_services.common.errors import NotFound
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.ports import Event
from pylon_services.scheduler.domain.scheduling import Explanation, QueueQuota
from pylon_services.scheduler.domain.snapshot import ClusterNode, ClusterView
from pylon_services.scheduler.domain.throughput import ThroughputTable


class FakeClock:
    """Time moves only when the code under test sleeps or the test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.cpu_s = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now

    def cpu(self) -> float:
        return self.cpu_s

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryState:
    """Queues, usage, explanations, the dispatch stream (one consumer group) and the cluster view.
    ``read_events`` advances the clock by the wait it was given when nothing is there, as a
    blocking read would."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.stream: list[Event] = []
        self.delivered: dict[str, str] = {}  # entry id -> consumer, until acknowledged
        self._next = 0
        self.acked: set[str] = set()
        self.explained: dict[str, Explanation] = {}
        self.view: ClusterView | None = None
        self.quotas: dict[str, QueueQuota] = {}
        self.table = ThroughputTable()
        self._usage: dict[str, float] = {}
        self.reads = 0

    def publish(self, event: dict[str, Any]) -> str:
        eid = f"{len(self.stream) + 1}-0"
        self.stream.append((eid, dict(event)))
        return eid

    async def queues(self) -> dict[str, QueueQuota]:
        return dict(self.quotas)

    async def create_queue(self, q: QueueQuota) -> QueueQuota:
        self.quotas[q.name] = q
        return q

    async def update_queue(self, q: QueueQuota) -> QueueQuota:
        self.quotas[q.name] = q
        return q

    async def usage(self) -> dict[str, float]:
        return dict(self._usage)

    async def add_usage(self, gpus_by_tenant: Mapping[str, float], half_life_s: float) -> dict[str, float]:
        return dict(self._usage)

    async def throughput(self) -> ThroughputTable:
        return self.table

    async def save_throughput(self, table: ThroughputTable) -> None:
        self.table = table

    async def save_explanations(self, by_key: dict[str, Explanation], *, merge: bool = False) -> None:
        if not merge:
            self.explained = {}
        self.explained.update(by_key)

    def forget_explanations(self) -> None:
        pass

    async def explanation(self, key: str) -> Explanation | None:
        return self.explained.get(key)

    async def ensure_group(self) -> None:
        pass

    async def read_events(self, consumer: str, block_ms: int, count: int = 200) -> list[Event]:
        self.reads += 1
        new = self.stream[self._next:self._next + count]
        if not new:
            await self.clock.sleep(block_ms / 1000)
            return []
        self._next += len(new)
        for eid, _ in new:
            self.delivered[eid] = consumer
        return [(eid, dict(e)) for eid, e in new]

    async def reclaim(self, consumer: str, min_idle_ms: int) -> list[Event]:
        return []

    async def pending_of(self, consumer: str) -> list[Event]:
        return [(eid, dict(e)) for eid, e in self.stream if self.delivered.get(eid) == consumer and eid not in self.acked]

    async def ack(self, ids: Sequence[str]) -> None:
        self.acked.update(ids)

    async def publish_cluster(self, view: ClusterView) -> None:
        self.view = view

    async def cluster(self) -> ClusterView | None:
        return self.view


class MemoryLedger:
    """Jobs stored as dicts (so callers never share objects with the store), with the pending
    queue, the active set, results and flags; writes append the events the Redis scripts do."""

    def __init__(self, state: MemoryState, track_changes: bool = True) -> None:
        self.state = state
        self.docs: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, float] = {}
        self.active_set: set[str] = set()
        self.results: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
        self.stops: set[str] = set()
        self.preempts: dict[str, float] = {}
        self.log: dict[str, list[str]] = {}
        self._touched: set[str] | None = set() if track_changes else None

    async def create(self, job: Job, require_queue: str = "") -> tuple[Job, bool]:
        job.queued_at = job.queued_at or job.create_time
        self.docs[job.key] = copy.deepcopy(job.to_dict())
        self.pending[job.key] = job.queued_at
        self.state.publish({"type": "submitted", "job": job.key})
        return job, True

    async def get(self, tenant: str, job_id: str) -> Job:
        doc = self.docs.get(f"{tenant}/{job_id}")
        if doc is None:
            raise NotFound(f"tenants/{tenant}/jobs/{job_id} not found")
        return Job.from_dict(copy.deepcopy(doc))

    async def get_many(self, keys: Sequence[str]) -> list[Job]:
        return [Job.from_dict(copy.deepcopy(self.docs[k])) for k in keys if k in self.docs]

    async def save_moved(self, job: Job, *, pending: bool, active: bool, notify: bool = False) -> bool:
        doc = self.docs.get(job.key)
        if doc is None or doc["version"] != job.version:
            return False
        job.version += 1
        self.docs[job.key] = copy.deepcopy(job.to_dict())
        if pending:
            self.pending[job.key] = job.queued_at
        else:
            self.pending.pop(job.key, None)
        (self.active_set.add if active else self.active_set.discard)(job.key)
        if notify:
            self.state.publish({"type": "changed", "job": job.key})
        if self._touched is not None:
            self._touched.add(job.key)
        return True

    async def pending_keys(self) -> list[str]:
        return [k for k, _ in sorted(self.pending.items(), key=lambda kv: kv[1])]

    async def pending_scored(self) -> list[tuple[str, float]]:
        return sorted(self.pending.items(), key=lambda kv: kv[1])

    async def queued(self, keys: Sequence[str]) -> list[bool]:
        return [k in self.pending for k in keys]

    async def active_keys(self) -> list[str]:
        return sorted(self.active_set)

    async def active(self) -> list[Job]:
        return [j for j in await self.get_many(await self.active_keys()) if not j.state.terminal]

    async def attempt_results(self, job: Job) -> dict[int, dict[str, Any]]:
        return dict(self.results.get((job.key, job.attempt), {}))

    async def list_jobs(self, tenant: str, page_size: int, page_token: str,
                        states: Iterable[JobState] = (), max_bytes: int = 0) -> tuple[list[Job], str]:
        raise NotImplementedError  # the API's paging is tested against Redis

    async def logs(self, tenant: str, job_id: str, offset: int) -> list[dict[str, Any]]:
        return [{"text": t, "attempt": 0, "t": 0.0} for t in self.log.get(f"{tenant}/{job_id}", [])[offset:]]

    async def tail(self, tenant: str, job_id: str, n: int) -> list[str]:
        return self.log.get(f"{tenant}/{job_id}", [])[-n:]

    async def metrics(self, tenant: str, job_id: str) -> list[dict[str, Any]]:
        return []

    def touched_any(self) -> bool:
        return bool(self._touched)

    def drain_touched(self) -> set[str]:
        if not self._touched:
            return set()
        out, self._touched = self._touched, set()
        return out

    async def request_stop(self, job: Job) -> None:
        self.stops.add(job.key)

    async def request_preempt(self, job: Job, grace_s: float) -> None:
        self.preempts[job.key] = grace_s

    async def clear_preempt(self, job: Job) -> None:
        self.preempts.pop(job.key, None)

    def report(self, job: Job, rank: int = 0, **result: Any) -> None:
        """What a worker does when it ends: its result, then a ``result`` event."""
        self.results.setdefault((job.key, job.attempt), {})[rank] = {"exit_code": 0, **result}
        self.state.publish({"type": "result", "job": job.key, "attempt": job.attempt, "rank": rank})


@dataclass
class FakeExecutor:
    """A cluster whose reservations are placed at once on the nodes the pass chose."""

    cluster: list[ClusterNode]
    launched: dict[str, list[str]] = field(default_factory=dict)  # attempt name -> node per worker
    released: list[str] = field(default_factory=list)
    crashed: dict[str, dict[int, str]] = field(default_factory=dict)
    scale_requests: list[list[dict[str, float]]] = field(default_factory=list)
    node_reads: int = 0

    async def nodes(self) -> list[ClusterNode]:
        self.node_reads += 1
        return list(self.cluster)

    def attempt_name(self, job: Job) -> str:
        return f"fake-{job.tenant}-{job.id}-a{job.attempt}"

    async def launch(self, job: Job, wait_s: float = 1.0) -> int:
        self.launched.setdefault(self.attempt_name(job), list(job.nodes))
        return job.workers

    async def placed_nodes(self, job: Job) -> list[str] | None:
        return self.launched.get(self.attempt_name(job))

    async def exists(self, job: Job) -> bool:
        return self.attempt_name(job) in self.launched

    async def workers_alive(self, job: Job) -> tuple[str, dict[int, str]]:
        crashed = self.crashed.get(self.attempt_name(job), {})
        return (f"worker {min(crashed)} crashed", crashed) if crashed else ("", {})

    async def release(self, job: Job) -> None:
        if self.launched.pop(self.attempt_name(job), None) is not None:
            self.released.append(self.attempt_name(job))

    async def orphans(self, wanted: set[str]) -> list[str]:
        return [n for n in self.launched if n not in wanted]

    async def remove(self, name: str) -> None:
        self.launched.pop(name, None)

    async def request_scale(self, bundles: list[dict[str, float]]) -> None:
        self.scale_requests.append(bundles)


class FakeLease:
    def __init__(self) -> None:
        self.holder: str | None = None

    async def hold(self, identity: str, ttl_s: float) -> bool:
        if self.holder in (None, identity):
            self.holder = identity
            return True
        return False

    async def give_back(self, identity: str) -> None:
        if self.holder == identity:
            self.holder = None
