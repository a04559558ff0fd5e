"""Scheduler state beside the job ledger: queues and quotas, fair-share usage, the throughput
table, the last pass's explanations, the dispatch stream, and the cluster view the leader publishes.

Keys: ``pylon:queue:{tenant}:{queue}`` (JSON of a QueueQuota), ``pylon:queues`` (set of queue
names), ``pylon:usage`` (hash tenant -> decayed GPU-seconds) and ``pylon:usage:at`` (when it was
last decayed), ``pylon:throughput`` (JSON of the ThroughputTable), ``pylon:explain`` (hash
``tenant/id`` -> Explanation JSON, replaced whole each pass), ``pylon:sched:events`` (a Redis
Stream read by the consumer group ``scheduler``: submits, launches and worker results),
``pylon:sched:cluster`` (JSON of the ``ClusterView`` the leader last saw: the API validates
submits and answers GetCluster from it, so the API process never connects to Ray).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import orjson
import redis.asyncio as aioredis

from pylon_services.common.errors import AlreadyExists, NotFound
from pylon_services.scheduler.domain.ports import Event
from pylon_services.scheduler.domain.scheduling import Explanation, QueueQuota
from pylon_services.scheduler.domain.snapshot import ClusterView
from pylon_services.scheduler.domain.throughput import ThroughputTable
from pylon_services.scheduler.store.keys import EVENTS, EVENTS_MAXLEN, queue_key

GROUP = "scheduler"
EXPLAIN = "pylon:explain"
USAGE = "pylon:usage"
THROUGHPUT = "pylon:throughput"
CLUSTER = "pylon:sched:cluster"


class SchedState:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis
        # What this process last wrote to EXPLAIN (None: unknown, replace the hash whole).
        self._explained: dict[str, Explanation] | None = None

    # --- queues ------------------------------------------------------------------------------

    async def create_queue(self, q: QueueQuota) -> QueueQuota:
        async with self.r.pipeline(transaction=True) as p:
            p.set(queue_key(q.name), json.dumps(asdict(q)), nx=True)
            p.sadd("pylon:queues", q.name)
            created, _ = await p.execute()
        if not created:
            raise AlreadyExists(f"{q.name} already exists")
        await self.publish({"type": "queue", "queue": q.name})
        return q

    async def update_queue(self, q: QueueQuota) -> QueueQuota:
        if not await self.r.set(queue_key(q.name), json.dumps(asdict(q)), xx=True):
            raise NotFound(f"{q.name} not found")
        await self.publish({"type": "queue", "queue": q.name})  # new quota: the leader passes soon
        return q

    async def queues(self) -> dict[str, QueueQuota]:
        names = sorted(m.decode() for m in await self.r.smembers("pylon:queues"))
        if not names:
            return {}
        raws = await self.r.mget([queue_key(n) for n in names])
        return {n: QueueQuota(**json.loads(r)) for n, r in zip(names, raws, strict=True) if r is not None}

    # --- fair-share usage --------------------------------------------------------------------

    async def add_usage(self, gpus_by_tenant: Mapping[str, float], half_life_s: float) -> dict[str, float]:
        """Decay every tenant's GPU-seconds by the time since the last update, add what each
        tenant held since then, and return the new usage. Only the leader calls this."""
        now = time.time()
        raw_at = await self.r.get("pylon:usage:at")
        dt = max(0.0, now - float(raw_at)) if raw_at else 0.0
        usage = {k.decode(): float(v) for k, v in (await self.r.hgetall(USAGE)).items()}
        decay = 0.5 ** (dt / half_life_s) if half_life_s > 0 else 1.0
        for tenant in set(usage) | set(gpus_by_tenant):
            usage[tenant] = usage.get(tenant, 0.0) * decay + gpus_by_tenant.get(tenant, 0.0) * dt
        async with self.r.pipeline(transaction=True) as p:
            if usage:
                p.hset(USAGE, mapping={k: repr(v) for k, v in usage.items()})
            p.set("pylon:usage:at", repr(now))
            await p.execute()
        return usage

    async def usage(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in (await self.r.hgetall(USAGE)).items()}

    # --- throughput table --------------------------------------------------------------------

    async def throughput(self) -> ThroughputTable:
        raw = await self.r.get(THROUGHPUT)
        return ThroughputTable.from_dict(json.loads(raw)) if raw else ThroughputTable()

    async def save_throughput(self, table: ThroughputTable) -> None:
        await self.r.set(THROUGHPUT, json.dumps(table.to_dict()))

    # --- explanations ------------------------------------------------------------------------

    async def save_explanations(self, by_key: dict[str, Explanation], *, merge: bool = False) -> None:
        """Make the stored explanations this pass's (a job no longer pending has none); with
        ``merge`` (an append pass), add these to them. Writes only what changed since this
        process's last write: a big backlog's explanations barely move between passes, and
        rewriting all of them cost the leader and Redis most of a pass."""
        prev = self._explained
        if merge:
            changed = by_key if prev is None else {k: e for k, e in by_key.items() if prev.get(k) != e}
            if changed:
                await self.r.hset(EXPLAIN, mapping={k: orjson.dumps(e) for k, e in changed.items()})
            if prev is not None:
                prev.update(by_key)
            return
        async with self.r.pipeline(transaction=True) as p:
            if prev is None:
                p.delete(EXPLAIN)
                changed = by_key
            else:
                changed = {k: e for k, e in by_key.items() if prev.get(k) != e}
                gone = [k for k in prev if k not in by_key]
                if gone:
                    p.hdel(EXPLAIN, *gone)
            if changed:
                p.hset(EXPLAIN, mapping={k: orjson.dumps(e) for k, e in changed.items()})
            await p.execute()
        self._explained = dict(by_key)

    def forget_explanations(self) -> None:
        """Replace the hash whole on the next write (another leader may have written since)."""
        self._explained = None

    async def explanation(self, key: str) -> Explanation | None:
        raw = await self.r.hget(EXPLAIN, key)
        if raw is None:
            return None
        d = json.loads(raw)
        d["blocking"] = tuple(d.get("blocking", ()))
        return Explanation(**d)

    # --- dispatch stream ---------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(EVENTS, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def publish(self, event: dict[str, Any]) -> None:
        await self.r.xadd(EVENTS, {"e": json.dumps(event)}, maxlen=EVENTS_MAXLEN, approximate=True)

    async def read_events(self, consumer: str, block_ms: int, count: int = 200) -> list[Event]:
        """New entries for ``consumer``; blocks up to ``block_ms`` (the loop's idle wait)."""
        resp = await self.r.xreadgroup(GROUP, consumer, {EVENTS: ">"}, count=count, block=block_ms or None)
        return [(eid.decode(), json.loads(f[b"e"])) for _, entries in resp or [] for eid, f in entries]

    async def reclaim(self, consumer: str, min_idle_ms: int) -> list[Event]:
        """Entries another consumer read but never acknowledged (it died mid-handling), now ours."""
        out: list[Event] = []
        start = "0-0"
        while True:
            resp = await self.r.xautoclaim(EVENTS, GROUP, consumer, min_idle_ms, start_id=start, count=200)
            start, entries = resp[0], resp[1]
            out.extend((eid.decode(), json.loads(f[b"e"])) for eid, f in entries if f)
            if start in (b"0-0", "0-0"):
                return out

    async def pending_of(self, consumer: str) -> list[Event]:
        """Entries delivered to ``consumer`` and not yet acknowledged (retried after an error)."""
        resp = await self.r.xreadgroup(GROUP, consumer, {EVENTS: "0"}, count=200)
        return [(eid.decode(), json.loads(f[b"e"])) for _, entries in resp or [] for eid, f in entries if f]

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            await self.r.xack(EVENTS, GROUP, *ids)

    # --- the cluster view ----------------------------------------------------------------------

    async def publish_cluster(self, view: ClusterView) -> None:
        await self.r.set(CLUSTER, orjson.dumps(view.to_dict()))

    async def cluster(self) -> ClusterView | None:
        raw = await self.r.get(CLUSTER)
        return ClusterView.from_dict(orjson.loads(raw)) if raw else None
