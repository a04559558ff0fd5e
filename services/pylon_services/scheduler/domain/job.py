"""The job model and its state machine: the one place that says which transitions are legal."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pylon_services.common.errors import FailedPrecondition
from pylon_services.scheduler.domain.spec import JobSpec


class JobState(str, Enum):
    PENDING = "pending"
    ADMITTED = "admitted"
    STARTING = "starting"
    RUNNING = "running"
    PREEMPTING = "preempting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


_S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.PENDING: frozenset({_S.ADMITTED, _S.CANCELLED, _S.FAILED}),
    _S.ADMITTED: frozenset({_S.STARTING, _S.PENDING, _S.CANCELLED, _S.FAILED}),
    _S.STARTING: frozenset({_S.RUNNING, _S.FAILED, _S.CANCELLED, _S.PENDING, _S.SUCCEEDED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.PREEMPTING, _S.PENDING}),
    _S.PREEMPTING: frozenset({_S.PENDING, _S.FAILED, _S.CANCELLED, _S.SUCCEEDED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}

# Exit code a preempted workload uses after checkpointing (EX_TEMPFAIL): "requeue me".
PREEMPTED_EXIT_CODE = 75
# A progress report's metrics kept on the job: a few keys of bounded length (a worker's report
# is not trusted to be small: a user command's code may feed it).
MAX_PROGRESS_METRICS = 32
MAX_METRIC_KEY_CHARS = 64
MAX_ETA_S = 10**12  # an estimate beyond this (a rate near 0) is said as this


@dataclass(frozen=True)
class TrainerStatus:
    """A running job's progress as its workers last reported it (Kubeflow Trainer's
    ``trainerStatus``); None where unknown."""

    progress_percentage: int | None
    estimated_remaining_seconds: int | None
    metrics: Mapping[str, float]
    last_update_time: float
    step: int
    total_steps: int


def progress_metrics(raw: Any) -> dict[str, float]:
    """The finite numeric values of a reported metrics dict, at most ``MAX_PROGRESS_METRICS`` keys
    of at most ``MAX_METRIC_KEY_CHARS`` characters; anything else is left out."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, float] = {}
    for k, v in raw.items():
        if len(out) >= MAX_PROGRESS_METRICS:
            break
        if (isinstance(k, str) and 0 < len(k) <= MAX_METRIC_KEY_CHARS and k.isascii() and k.isprintable()
                and isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v)):
            out[k] = float(v)
    return out


def new_job_id() -> str:
    """``j<UTC date>-<time>-<8 random hex>``: sortable by submit second; the ledger refuses an id
    drawn twice and draws again."""
    return time.strftime("j%Y%m%d-%H%M%S-", time.gmtime()) + os.urandom(4).hex()


@dataclass
class Job:
    """A job as the ledger stores it: the submitted spec and what happened to it so far."""

    id: str
    tenant: str
    spec: JobSpec
    state: JobState = JobState.PENDING
    message: str = "queued"
    attempt: int = 0
    exit_code: int = 0
    gpu_type: str = ""
    last_log_lines: list[str] = field(default_factory=list)
    output_uri: str = ""
    latest_metrics: dict[str, float] = field(default_factory=dict)
    create_time: float = field(default_factory=time.time)
    start_time: float = 0.0
    end_time: float = 0.0
    creator: str = ""
    request_id: str = ""
    # Failed attempts so far (counted against max_retries; preemptions are not failures).
    retries: int = 0
    preemptions: int = 0
    # Node ids of the current attempt's workers (one per worker) and when they were admitted.
    nodes: list[str] = field(default_factory=list)
    admit_time: float = 0.0
    borrowed: bool = False
    # Last step the job reported (progress survives preemption through its checkpoint).
    step: int = 0
    # Bumped on every stored change: writers compare-and-swap on it so a cancel and the
    # controller never overwrite each other.
    version: int = 0
    # gang=false only: the GPU type of each worker (by rank) of the current attempt, which may
    # differ between workers; empty when all run on ``gpu_type``.
    worker_gpu_types: list[str] = field(default_factory=list)
    # When the job entered the queue; a requeued job keeps its place.
    queued_at: float = 0.0
    # Unix time by which a preempted job must have exited.
    preempt_deadline: float = 0.0
    # The latest progress report (``TrainerStatus``): the trainer's total steps (0: unknown), its
    # metrics, the step rate, its own remaining-time estimate (-1: none), and when it came.
    progress_total_steps: int = 0
    progress_metrics: dict[str, float] = field(default_factory=dict)
    progress_rate: float = 0.0
    progress_eta_s: float = -1.0
    progress_time: float = 0.0
    # The model version a succeeded trainer's output was registered as (``register_model``).
    registered_model_version: str = ""

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/jobs/{self.id}"

    @property
    def key(self) -> str:
        """``tenant/id``: how queues and indexes refer to the job."""
        return f"{self.tenant}/{self.id}"

    @property
    def queue(self) -> str:
        return f"tenants/{self.tenant}/queues/{self.spec.queue}"

    @property
    def priority(self) -> int:
        return self.spec.priority

    @property
    def workers(self) -> int:
        return self.spec.workers

    @property
    def gang(self) -> bool:
        """All-or-nothing start on one GPU type."""
        return self.spec.gang

    def worker_gpu_type(self, rank: int) -> str:
        """The GPU type worker ``rank`` of the current attempt runs on."""
        return self.worker_gpu_types[rank] if rank < len(self.worker_gpu_types) else self.gpu_type

    def note_progress(self, event: Mapping[str, Any], now: float) -> bool:
        """Take a worker's progress report (step, total_steps, rate, metrics); True when the
        step moved forward, the only change worth a ledger write (a report comes every few
        seconds; its other fields ride along with the next step's write)."""
        step = _int(event.get("step"))
        total = _int(event.get("total_steps"))
        if total > 0:
            self.progress_total_steps = total
        metrics = progress_metrics(event.get("metrics"))
        if metrics:
            self.progress_metrics = metrics
        eta = metrics.get("eta_s", -1.0)
        self.progress_eta_s = eta if eta >= 0 else -1.0
        rate = event.get("rate")
        if isinstance(rate, (int, float)) and math.isfinite(rate) and rate >= 0:
            self.progress_rate = float(rate)
        first = not self.progress_time
        self.progress_time = now
        if step > self.step:
            self.step = step
            return True
        return first

    def trainer_status(self) -> TrainerStatus | None:
        """The job's progress for JobStatus; None before its first report."""
        if not self.progress_time:
            return None
        total = self.progress_total_steps or self.spec.total_steps
        pct = max(0, min(100, int(100 * self.step / total))) if total > 0 else None
        remaining: int | None = None
        if self.progress_eta_s >= 0:
            remaining = int(min(self.progress_eta_s, MAX_ETA_S))
        elif total > 0 and self.progress_rate > 0:
            remaining = int(min(max(0, total - self.step) / self.progress_rate, MAX_ETA_S))
        return TrainerStatus(pct, remaining, dict(self.progress_metrics), self.progress_time, self.step, total)

    def transition(self, new: JobState, message: str) -> None:
        """Move to ``new`` or raise FailedPrecondition if the state machine forbids it."""
        if new not in TRANSITIONS[self.state]:
            raise FailedPrecondition(f"job {self.name} is {self.state.value}; it cannot become {new.value}")
        self.state = new
        self.message = message
        now = time.time()
        if new == JobState.RUNNING and not self.start_time:
            self.start_time = now
        if new.terminal:
            self.end_time = now

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (shallow: callers serialise it at once, so no deep copy on the
        submit path)."""
        d = dict(self.__dict__)
        d["state"] = self.state.value
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        known = cls.__dataclass_fields__
        kw = {k: v for k, v in d.items() if k in known}
        kw["state"] = JobState(kw["state"])
        kw["spec"] = JobSpec.from_dict(kw["spec"])
        return cls(**kw)


def _int(value: Any) -> int:
    """A reported whole number, or 0 for anything that is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return int(value)
