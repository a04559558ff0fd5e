"""The job model and its state machine: the one place that says which transitions are legal."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pylon_services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument


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

BUILTIN_TRAINERS = ("tiny-gpt",)
# Priority classes (Kueue's WorkloadPriorityClass): higher admits first and may preempt lower.
PRIORITY_CLASSES = {"low": 0, "normal": 100, "high": 1000}
# Exit code a preempted workload uses after checkpointing (EX_TEMPFAIL): "requeue me".
PREEMPTED_EXIT_CODE = 75
ENGINES = ("torch", "vllm")


@dataclass
class Job:
    """A job as the ledger stores it. ``spec`` is the JobSpec as a plain dict."""

    id: str
    tenant: str
    spec: dict[str, Any]
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

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/jobs/{self.id}"

    @property
    def key(self) -> str:
        """``tenant/id``: how queues and indexes refer to the job."""
        return f"{self.tenant}/{self.id}"

    @property
    def queue(self) -> str:
        return f"tenants/{self.tenant}/queues/{self.spec.get('queue') or 'default'}"

    @property
    def priority(self) -> int:
        return PRIORITY_CLASSES.get(self.spec.get("priority_class") or "normal", PRIORITY_CLASSES["normal"])

    @property
    def workers(self) -> int:
        return int(self.spec.get("workers", 1) or 1)

    @property
    def gang(self) -> bool:
        """All-or-nothing start on one GPU type; an unset ``gang`` means true."""
        return bool(self.spec.get("gang", True))

    def worker_gpu_type(self, rank: int) -> str:
        """The GPU type worker ``rank`` of the current attempt runs on."""
        return self.worker_gpu_types[rank] if rank < len(self.worker_gpu_types) else self.gpu_type

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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        known = cls.__dataclass_fields__
        kw = {k: v for k, v in d.items() if k in known}
        kw["state"] = JobState(kw["state"])
        return cls(**kw)


@dataclass(frozen=True)
class PoolCapacity:
    """Largest node of one GPU type: what a single worker can ever get there."""

    gpu_type: str
    max_gpus_per_node: float
    max_cpus_per_node: float
    nodes: int


def validate_spec(spec: dict[str, Any], pools: list[PoolCapacity]) -> None:
    """Reject at submit what is malformed (INVALID_ARGUMENT) or can never run (FAILED_PRECONDITION),
    so no job waits forever for a node that does not exist."""
    bad: list[FieldViolation] = []
    workers = spec.get("workers", 1)
    res = spec.get("resources", {})
    gpus, cpus = float(res.get("gpus", 0)), float(res.get("cpus", 1))
    if workers < 1 or workers > 1024:
        bad.append(FieldViolation("spec.workers", "must be between 1 and 1024"))
    if gpus < 0 or cpus < 0:
        bad.append(FieldViolation("spec.resources", "gpus and cpus must not be negative"))
    kind = next((k for k in ("trainer", "command", "engine") if spec.get(k)), None)
    if kind is None:
        bad.append(FieldViolation("spec.workload", "set one of trainer, command or engine"))
    elif kind == "trainer":
        if spec["trainer"].get("trainer") not in BUILTIN_TRAINERS:
            bad.append(FieldViolation("spec.trainer.trainer", f"must be one of {', '.join(BUILTIN_TRAINERS)}"))
        if workers != 1:
            bad.append(FieldViolation("spec.workers", "the built-in tiny-gpt trainer runs on exactly 1 worker"))
        bad.extend(_trainer_config_violations(spec["trainer"].get("config", {})))
    elif kind == "command" and not spec["command"].get("argv"):
        bad.append(FieldViolation("spec.command.argv", "must not be empty"))
    elif kind == "engine" and spec["engine"].get("engine", "torch") not in ENGINES:
        bad.append(FieldViolation("spec.engine.engine", f"must be one of {', '.join(ENGINES)}"))
    if spec.get("max_retries", 0) < 0:
        bad.append(FieldViolation("spec.max_retries", "must not be negative"))
    if (spec.get("priority_class") or "normal") not in PRIORITY_CLASSES:
        bad.append(FieldViolation("spec.priority_class", f"must be one of {', '.join(PRIORITY_CLASSES)}"))
    if int(spec.get("total_steps", 0) or 0) < 0:
        bad.append(FieldViolation("spec.total_steps", "must not be negative"))
    if int(spec.get("checkpoint_every_steps", 0) or 0) < 0:
        bad.append(FieldViolation("spec.checkpoint_every_steps", "must not be negative (0 = the trainer's default)"))
    if bad:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in bad), bad)
    _check_satisfiable(gpus, cpus, list(res.get("gpu_types", [])), pools)


def _trainer_config_violations(config: dict[str, Any]) -> list[FieldViolation]:
    """Check the trainer's own settings at submit, not minutes later in a worker."""
    from pylon_services.trainers.tiny_gpt import InvalidTrainConfig, TrainConfig

    try:
        TrainConfig.from_dict(config)
    except InvalidTrainConfig as e:
        return [FieldViolation(f"spec.trainer.config.{f}", d) for f, d in e.violations]
    return []


def _check_satisfiable(gpus: float, cpus: float, types: list[str], pools: list[PoolCapacity]) -> None:
    known = {p.gpu_type: p for p in pools}
    unknown = [t for t in types if t not in known]
    if unknown:
        raise FailedPrecondition(f"unknown GPU type(s) {unknown}; the cluster has {sorted(known)}")
    candidates = [known[t] for t in types] if types else list(pools)
    if gpus > 0:
        candidates = [p for p in candidates if p.gpu_type != "cpu"]
    if not any(p.max_gpus_per_node >= gpus and p.max_cpus_per_node >= cpus for p in candidates):
        best = max((p.max_gpus_per_node for p in candidates), default=0)
        raise FailedPrecondition(f"no node can ever hold one worker ({gpus:g} GPUs, {cpus:g} CPUs); "
                                 f"the largest acceptable node has {best:g} GPUs")
