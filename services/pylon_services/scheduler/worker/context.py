"""One worker's link to the platform: its log, metrics, result and control flags in Redis, its
gang's rendezvous, and its checkpoints in the object store. ``WorkerContext`` is what trainers and engines get (it
implements ``pylon_services.workloads.WorkloadContext``).

Log lines and metrics go to Redis as they happen (``StreamLogs`` follows them); the result is
written where a (possibly new) leader finds it, plus a ``result`` event on the dispatch stream.
A watcher thread polls the job's stop and preempt flags: preempt sets ``preempt`` (user code
polls ``pylon.train.should_preempt()``) and tells the grace period; stop (cancel) sets ``stop``.
Checkpoints use the whole-or-nothing layout of ``pylon_services.workloads.checkpoints``.
"""

from __future__ import annotations

import json
import math
import socket
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
    RENDEZVOUS_TTL_S,
    log_key,
    metrics_key,
    preempt_key,
    rendezvous_key,
    results_key,
    stop_key,
)
from pylon_services.storage.base import ObjectStore
from pylon_services.workloads.checkpoints import CheckpointWriter, latest_checkpoint

METRICS_PREFIX = "##pylon-metrics "
RATE_EVERY_S = 2.0
FLAG_POLL_S = 0.3
RENDEZVOUS_POLL_S = 0.1
# What a progress event carries of a step's metrics (the job's live status; kept small).
STATUS_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "eta_s")


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
        self.last_step = -1  # the highest step metrics were reported for
        self._rate_at: tuple[float, int] | None = None
        self._writer: CheckpointWriter | None = None

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
        self._push_metrics(step, values)
        self._report_rate(step)

    def report_progress(self, step: int, total_steps: int, metrics: Mapping[str, float]) -> None:
        """A step's metrics, plus the job's live status on the progress event (rank 0)."""
        self._push_metrics(step, metrics)
        self._report_rate(step, total_steps, status_metrics(metrics), final=0 < total_steps <= step)

    def _push_metrics(self, step: int, values: Mapping[str, float]) -> None:
        pipe = self.r.pipeline()
        for k, v in values.items():
            pipe.rpush(metrics_key(self.tenant, self.job_id), json.dumps({"key": k, "step": step, "value": v,
                                                                         "t": time.time()}))
        pipe.execute()
        self.last_step = max(self.last_step, step)

    def _report_rate(self, step: int, total_steps: int = 0, status: Mapping[str, float] | None = None,
                     final: bool = False) -> None:
        """At most every few seconds (and at the final step), tell the scheduler this worker's
        step rate (throughput table), step (remaining work) and, when known, the total steps and
        a metrics summary (live status). Rank 0 speaks for the gang."""
        now = time.time()
        if self.rank != 0:
            return
        if self._rate_at is None or step < self._rate_at[1]:
            self._rate_at = (now, step)
            if not final:
                return
        t0, s0 = self._rate_at
        if now - t0 >= RATE_EVERY_S or final:
            event: dict[str, Any] = {"type": "progress", "job": self.job.key, "attempt": self.attempt, "step": step,
                                     "rate": (step - s0) / (now - t0) if now > t0 else 0.0,
                                     "gpu_type": self.rate_gpu_type, "job_type": self.job.spec.effective_job_type}
            if total_steps > 0:
                event["total_steps"] = total_steps
            if status:
                event["metrics"] = dict(status)
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

    def checkpoints(self, keep: int = 3) -> CheckpointWriter:
        """This rank's writer on the job's checkpoint prefix (one per worker; ``keep`` updates it)."""
        if self._writer is None:
            self._writer = CheckpointWriter(self.store, checkpoint_prefix(self.job), rank=self.rank,
                                            world_size=self.world_size, keep=keep, log=self.log,
                                            attempt=self.attempt)
        self._writer.keep = keep
        return self._writer

    def close_checkpoints(self) -> None:
        """Wait for this worker's pending checkpoint uploads (an error is logged, not raised: the
        workload's own result stands; the previous whole checkpoint stays the latest)."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        except Exception as e:  # noqa: BLE001 - logged by the writer; the result is the workload's
            self.log(f"pylon: a checkpoint upload failed: {type(e).__name__}")
        self._writer = None

    def load_latest_checkpoint(self, rank: int | None = None, at_most: int | None = None
                               ) -> tuple[int, dict[str, bytes]] | None:
        return latest_checkpoint(self.store, checkpoint_prefix(self.job), rank=self.rank if rank is None else rank,
                                 log=self.log, at_most=at_most)

    def save_checkpoint(self, step: int, files: Mapping[str, bytes]) -> None:
        """A whole checkpoint of ``step``, returning once it is visible (every rank calls it)."""
        self.checkpoints().save(step, files).result()

    def load_checkpoint(self) -> dict[str, bytes]:
        """This rank's files of the latest whole checkpoint, else {}."""
        found = self.load_latest_checkpoint()
        return found[1] if found else {}

    # --- rendezvous -------------------------------------------------------------------------------

    def rendezvous(self, timeout_s: float = 120.0) -> tuple[str, int]:
        """(master_addr, master_port) for torch.distributed: rank 0 picks a free port on its node's
        address and publishes it under the attempt's key; other ranks wait for it."""
        if self.world_size <= 1:
            return "127.0.0.1", free_port()
        key = rendezvous_key(self.tenant, self.job_id, self.attempt)
        if self.rank == 0:
            addr, port = node_address(self.settings), free_port()
            self.r.set(key, f"{addr}:{port}", ex=RENDEZVOUS_TTL_S)
            return addr, port
        deadline = time.monotonic() + timeout_s
        while True:
            raw = self.r.get(key)
            if raw is not None:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                host, _, number = text.rpartition(":")
                return host, int(number)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"rank {self.rank} waited {timeout_s:g}s for rank 0 of attempt {self.attempt} "
                                   "to publish its rendezvous address (did rank 0 start?)")
            time.sleep(RENDEZVOUS_POLL_S)

    def output_prefix(self) -> str:
        return f"tenants/{self.tenant}/jobs/{self.job_id}/output"


def status_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """The live-status summary of a step's metrics: the known keys, finite, 6 significant digits."""
    out = {}
    for k in STATUS_METRICS:
        v = values.get(k)
        if isinstance(v, int | float) and math.isfinite(v):
            out[k] = float(f"{float(v):.6g}")
    return out


def free_port() -> int:
    """A TCP port free on every interface now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_address(settings: Settings) -> str:
    """The address other nodes reach this worker by: Ray's node IP inside a Ray worker, else the
    configured addresses, else the host name's address."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())
    except ImportError:
        pass
    if settings.ray_node_ip_address:
        return settings.ray_node_ip_address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
