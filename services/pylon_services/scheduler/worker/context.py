"""One worker's link to the platform: its log, metrics, result and control flags in Redis, and
its checkpoints in the object store. ``WorkerContext`` is what trainers and engines get (it
implements ``pylon_services.workloads.WorkloadContext``).

Log lines and metrics go to Redis as they happen (``StreamLogs`` follows them); the result is
written where a (possibly new) leader finds it, plus a ``result`` event on the dispatch stream.
A watcher thread polls the job's stop and preempt flags: preempt sets ``preempt`` (user code
polls ``pylon.train.should_preempt()``) and tells the grace period; stop (cancel) sets ``stop``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.spec import Command, EngineReplica, Trainer
from pylon_services.scheduler.store.keys import (
    EVENTS,
    EVENTS_MAXLEN,
    log_key,
    metrics_key,
    preempt_key,
    results_key,
    stop_key,
)
from pylon_services.storage.base import ObjectStore

METRICS_PREFIX = "##pylon-metrics "
RATE_EVERY_S = 2.0
FLAG_POLL_S = 0.3
LATEST_CHECKPOINT = "latest"


def checkpoint_prefix(job: Job) -> str:
    return f"tenants/{job.tenant}/jobs/{job.id}/checkpoint/"


def workload_section(job: Job) -> dict[str, Any]:
    """The job's workload fields as stored (what a trainer or engine reads)."""
    return dict(job.spec.to_dict()[job.spec.kind])


class WorkerContext:
    """One worker of one job attempt (see the module's doc)."""

    def __init__(self, settings: Settings, job: Job, attempt: int, rank: int = 0,
                 store: ObjectStore | None = None) -> None:
        # Retries ride out a Redis restart (AOF keeps the data; only the connections break).
        self.r = redis.Redis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 8),
                                      retry_on_error=[redis.ConnectionError])
        self.settings = settings
        self.job = job
        self.tenant, self.job_id, self.attempt, self.rank = job.tenant, job.id, attempt, rank
        self.world_size = job.workers
        self.workload: Mapping[str, Any] = workload_section(job)
        self.checkpoint_every_steps = job.spec.checkpoint_every_steps
        self.store = store if store is not None else object_store(settings)
        self.gpu_type = job.worker_gpu_type(rank)
        # A gang=false job split over GPU types runs at its slowest worker's pace: its step rate
        # says nothing about one type, so it is not fed to the throughput table.
        self.rate_gpu_type = "" if len(set(job.worker_gpu_types)) > 1 else self.gpu_type
        self.lines: list[str] = []
        self.preempt = threading.Event()
        self.stop = threading.Event()
        self.preempt_grace_s = 0.0
        self._rate_at: tuple[float, int] | None = None

    @property
    def job_name(self) -> str:
        return self.job.name

    @property
    def kind(self) -> str:
        return self.job.spec.kind

    def workload_name(self) -> str:
        w = self.job.spec.workload
        if isinstance(w, Trainer):
            return w.trainer
        if isinstance(w, EngineReplica):
            return w.engine
        assert isinstance(w, Command)
        return ""

    # --- log, metrics, result ---------------------------------------------------------------------

    def log(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            if line.startswith(METRICS_PREFIX):
                self._user_metrics(line[len(METRICS_PREFIX):])
                continue
            self.lines.append(line)
            self.r.rpush(log_key(self.tenant, self.job_id),
                         json.dumps({"text": line, "attempt": self.attempt, "t": time.time()}))

    def _user_metrics(self, payload: str) -> None:
        try:
            values = json.loads(payload)
            step = int(values.pop("step"))
            self.metrics(step, {k: float(v) for k, v in values.items()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.log(f"pylon: ignored a malformed metrics report ({e})")

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        pipe = self.r.pipeline()
        for k, v in values.items():
            pipe.rpush(metrics_key(self.tenant, self.job_id), json.dumps({"key": k, "step": step, "value": v,
                                                                         "t": time.time()}))
        pipe.execute()
        self._report_rate(step)

    def _report_rate(self, step: int) -> None:
        """Every few seconds, tell the scheduler this worker's step rate (throughput table) and
        step (remaining work). Rank 0 speaks for the gang."""
        now = time.time()
        if self.rank != 0:
            return
        if self._rate_at is None or step < self._rate_at[1]:
            self._rate_at = (now, step)
            return
        t0, s0 = self._rate_at
        if now - t0 >= RATE_EVERY_S:
            event = {"type": "progress", "job": self.job.key, "attempt": self.attempt, "step": step,
                     "rate": (step - s0) / (now - t0), "gpu_type": self.rate_gpu_type,
                     "job_type": self.job.spec.effective_job_type}
            self.r.xadd(EVENTS, {"e": json.dumps(event)}, maxlen=EVENTS_MAXLEN, approximate=True)
            self._rate_at = (now, step)

    def report(self, result: dict[str, Any]) -> None:
        """Write this worker's result where a (possibly new) leader will find it."""
        result = {**result, "preempted": self.preempt.is_set()}
        self.r.hset(results_key(self.tenant, self.job_id, self.attempt), str(self.rank), json.dumps(result))
        event = {"type": "result", "job": self.job.key, "attempt": self.attempt, "rank": self.rank}
        self.r.xadd(EVENTS, {"e": json.dumps(event)}, maxlen=EVENTS_MAXLEN, approximate=True)

    def archive_log(self) -> None:
        self.store.put(f"tenants/{self.tenant}/jobs/{self.job_id}/logs/attempt-{self.attempt}-r{self.rank}.log",
                       ("\n".join(self.lines) + "\n").encode())

    # --- control flags ----------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        return self.stop.is_set() or self.preempt.is_set()

    def preempt_requested(self) -> bool:
        return self.preempt.is_set()

    def watch_flags(self, done: threading.Event) -> None:
        """Poll the flags until ``done`` or one is raised (run on a thread)."""
        while not done.wait(FLAG_POLL_S):
            if self.r.exists(stop_key(self.tenant, self.job_id)):
                self.stop.set()
                return
            grace = self.r.get(preempt_key(self.tenant, self.job_id))
            if grace is not None:
                self.preempt_grace_s = float(grace)
                self.log(f"pylon: preemption requested; {self.preempt_grace_s:g}s to checkpoint and exit")
                self.preempt.set()
                return

    # --- checkpoints and output -------------------------------------------------------------------

    def save_checkpoint(self, step: int, files: Mapping[str, bytes]) -> None:
        """Write a whole checkpoint under ``checkpoint/step-N/``, then point ``checkpoint/latest``
        at it, then drop older steps: a crash mid-write never leaves a mix of two steps as the
        latest."""
        prefix, folder = checkpoint_prefix(self.job), f"step-{step:012d}/"
        for name, data in files.items():
            self.store.put(prefix + folder + name, data)
        self.store.put(prefix + LATEST_CHECKPOINT, folder.encode())
        for o in list(self.store.iter_all(prefix + "step-")):
            if not o.key.startswith(prefix + folder):
                self.store.delete(o.key)

    def load_checkpoint(self) -> dict[str, bytes]:
        """The latest checkpoint an earlier attempt left (periodic or on preemption), else {}."""
        prefix = checkpoint_prefix(self.job)
        if not self.store.exists(prefix + LATEST_CHECKPOINT):
            return {}
        folder = prefix + self.store.get(prefix + LATEST_CHECKPOINT).decode()
        return {o.key[len(folder):]: self.store.get(o.key) for o in self.store.iter_all(folder)}

    def output_prefix(self) -> str:
        return f"tenants/{self.tenant}/jobs/{self.job_id}/output"
