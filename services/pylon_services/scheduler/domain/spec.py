"""What a user submits: ``JobSpec`` and its workload, typed, validated once at the API boundary.

The API converts the request's proto into a ``JobSpec`` (``api/convert.py``), ``validate_spec``
checks it against the workload registry (``pylon_services.workloads``: trainer and engine names,
their config checks and worker limits, all torch-free), and from then on every part of the
scheduler reads typed fields. The ledger stores ``to_dict()``: the proto's JSON field names, so
records written before this module existed still load with ``from_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pylon_services.common.errors import FieldViolation, InvalidArgument
from pylon_services.scheduler.domain.scheduling import Demand
from pylon_services.workloads import REGISTRY, WorkloadKind, WorkloadRegistry

# Priority classes (Kueue's WorkloadPriorityClass): higher admits first and may preempt lower.
PRIORITY_CLASSES = {"low": 0, "normal": 100, "high": 1000}
PLACEMENTS = ("pack", "spread")
MAX_WORKERS = 1024


@dataclass(frozen=True)
class Resources:
    """What one worker needs."""

    gpus: float = 0.0
    cpus: float = 1.0
    memory_bytes: int = 0
    # Acceptable GPU types in order of preference; empty means any.
    gpu_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trainer:
    """A registered trainer (``workloads`` registry) on dataset versions, maybe from a base model."""

    trainer: str
    config: Mapping[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    base_model: str = ""
    # Set at submit: the exact version ``base_model`` resolved to and its files' object keys,
    # so retries and resumes use them even if the alias moves.
    base_model_version: str = ""
    base_model_files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A user command, run in an unpacked copy of an uploaded working directory."""

    argv: tuple[str, ...]
    working_dir_key: str = ""
    pip_requirements: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # Dataset versions the command may read through its data endpoint (``pylon.train.data_store``).
    datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineReplica:
    """One serving replica of a gateway deployment, run by a registered engine."""

    deployment: str
    model_version: str
    engine: str = "torch"
    engine_config: Mapping[str, Any] = field(default_factory=dict)


Workload = Trainer | Command | EngineReplica
_KINDS: dict[type, str] = {Trainer: "trainer", Command: "command", EngineReplica: "engine"}


@dataclass(frozen=True)
class JobSpec:
    """A submitted job: its workload and how to run it."""

    workload: Workload
    queue: str = "default"
    priority_class: str = "normal"
    workers: int = 1
    resources: Resources = field(default_factory=Resources)
    # All workers start together on one GPU type (see scheduler.proto for gang=false).
    gang: bool = True
    placement: str = "pack"
    max_runtime_s: float = 0.0  # per attempt; 0 = no limit
    max_retries: int = 0
    preemptible: bool = False
    checkpoint_every_steps: int = 0  # 0 = the workload's default
    labels: Mapping[str, str] = field(default_factory=dict)
    display_name: str = ""
    job_type: str = ""  # keys the throughput table; empty = the workload kind
    total_steps: int = 0  # when known: remaining work = total_steps - reported step

    @property
    def kind(self) -> str:
        """"trainer", "command" or "engine"."""
        return _KINDS[type(self.workload)]

    @property
    def priority(self) -> int:
        return PRIORITY_CLASSES.get(self.priority_class, PRIORITY_CLASSES["normal"])

    @property
    def effective_job_type(self) -> str:
        return self.job_type or self.kind

    def demand(self) -> Demand:
        r = self.resources
        return Demand(workers=self.workers, gpus_per_worker=r.gpus, cpus_per_worker=r.cpus,
                      memory_bytes_per_worker=r.memory_bytes, gpu_types=r.gpu_types, gang=self.gang)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: the proto's JSON names (``max_runtime`` as "90s")."""
        r = self.resources
        d: dict[str, Any] = {
            "queue": self.queue, "priority_class": self.priority_class, "workers": self.workers,
            "resources": {"gpus": r.gpus, "cpus": r.cpus, "memory_bytes": r.memory_bytes, "gpu_types": list(r.gpu_types)},
            "gang": self.gang, "placement": self.placement, "max_retries": self.max_retries,
            "preemptible": self.preemptible, "checkpoint_every_steps": self.checkpoint_every_steps,
            "labels": dict(self.labels), "display_name": self.display_name, "job_type": self.job_type,
            "total_steps": self.total_steps, self.kind: _workload_dict(self.workload)}
        if self.max_runtime_s:
            d["max_runtime"] = f"{self.max_runtime_s:g}s"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        """Read a stored spec (also the looser dicts of earlier versions: int64 fields as strings,
        absent fields, ``max_runtime`` as a proto Duration string)."""
        res = d.get("resources") or {}
        return cls(
            workload=_workload_from(d), queue=d.get("queue") or "default",
            priority_class=d.get("priority_class") or "normal", workers=int(d.get("workers") or 1),
            resources=Resources(gpus=float(res.get("gpus") or 0), cpus=float(res.get("cpus") or 1),
                                memory_bytes=int(res.get("memory_bytes") or 0),
                                gpu_types=tuple(t for t in res.get("gpu_types") or () if t)),
            gang=bool(d.get("gang", True)), placement=d.get("placement") or "pack",
            max_runtime_s=duration_seconds(d.get("max_runtime")), max_retries=int(d.get("max_retries") or 0),
            preemptible=bool(d.get("preemptible", False)),
            checkpoint_every_steps=int(d.get("checkpoint_every_steps") or 0), labels=dict(d.get("labels") or {}),
            display_name=d.get("display_name") or "", job_type=d.get("job_type") or "",
            total_steps=int(d.get("total_steps") or 0))


def _workload_dict(w: Workload) -> dict[str, Any]:
    if isinstance(w, Trainer):
        out: dict[str, Any] = {"trainer": w.trainer, "config": dict(w.config), "datasets": list(w.datasets),
                               "base_model": w.base_model, "base_model_version": w.base_model_version}
        if w.base_model_files:
            out["base_model_files"] = dict(w.base_model_files)
        return out
    if isinstance(w, Command):
        return {"argv": list(w.argv), "working_dir_key": w.working_dir_key,
                "pip_requirements": list(w.pip_requirements), "env": dict(w.env), "datasets": list(w.datasets)}
    return {"deployment": w.deployment, "model_version": w.model_version, "engine": w.engine,
            "engine_config": dict(w.engine_config)}


def _workload_from(d: Mapping[str, Any]) -> Workload:
    if t := d.get("trainer"):
        return Trainer(trainer=t.get("trainer", ""), config=dict(t.get("config") or {}),
                       datasets=tuple(t.get("datasets") or ()), base_model=t.get("base_model") or "",
                       base_model_version=t.get("base_model_version") or "",
                       base_model_files=dict(t.get("base_model_files") or {}))
    if c := d.get("command"):
        return Command(argv=tuple(c.get("argv") or ()), working_dir_key=c.get("working_dir_key") or "",
                       pip_requirements=tuple(c.get("pip_requirements") or ()), env=dict(c.get("env") or {}),
                       datasets=tuple(c.get("datasets") or ()))
    e = d.get("engine") or {}
    return EngineReplica(deployment=e.get("deployment", ""), model_version=e.get("model_version", ""),
                         engine=e.get("engine") or "torch", engine_config=dict(e.get("engine_config") or {}))


def duration_seconds(value: Any) -> float:
    """A stored duration ("90s", "1.5s" or a number) as seconds; 0 when unset."""
    if not value:
        return 0.0
    return float(str(value).rstrip("s"))


def validate_spec(spec: JobSpec, registry: WorkloadRegistry = REGISTRY) -> None:
    """Reject what is malformed with INVALID_ARGUMENT, naming every bad field at once. Whether the
    cluster can ever run it is ``placement.check_satisfiable``'s question, asked after this."""
    bad = common_violations(spec) + _workload_violations(spec, registry)
    if bad:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in bad), bad)


def common_violations(spec: JobSpec) -> list[FieldViolation]:
    """What is wrong with ``spec`` apart from its workload."""
    bad: list[FieldViolation] = []
    r = spec.resources
    if not 1 <= spec.workers <= MAX_WORKERS:
        bad.append(FieldViolation("spec.workers", f"must be between 1 and {MAX_WORKERS}"))
    if not (_finite_non_negative(r.gpus) and _finite_non_negative(r.cpus)):
        bad.append(FieldViolation("spec.resources", "gpus and cpus must be finite and not negative"))
    if r.memory_bytes < 0:
        bad.append(FieldViolation("spec.resources.memory_bytes", "must not be negative"))
    if spec.placement not in PLACEMENTS:
        bad.append(FieldViolation("spec.placement", f"must be one of {', '.join(PLACEMENTS)}"))
    if spec.max_retries < 0:
        bad.append(FieldViolation("spec.max_retries", "must not be negative"))
    if not _finite_non_negative(spec.max_runtime_s):
        bad.append(FieldViolation("spec.max_runtime", "must not be negative"))
    if spec.priority_class not in PRIORITY_CLASSES:
        bad.append(FieldViolation("spec.priority_class", f"must be one of {', '.join(PRIORITY_CLASSES)}"))
    if spec.total_steps < 0:
        bad.append(FieldViolation("spec.total_steps", "must not be negative"))
    if spec.checkpoint_every_steps < 0:
        bad.append(FieldViolation("spec.checkpoint_every_steps", "must not be negative (0 = the trainer's default)"))
    return bad


def _workload_violations(spec: JobSpec, registry: WorkloadRegistry) -> list[FieldViolation]:
    w = spec.workload
    if isinstance(w, Command):
        return [] if w.argv else [FieldViolation("spec.command.argv", "must not be empty")]
    if isinstance(w, Trainer):
        kind, field_name, name, config, path = WorkloadKind.TRAINER, "trainer", w.trainer, w.config, "spec.trainer"
    else:
        kind, field_name, name, config, path = WorkloadKind.ENGINE, "engine", w.engine, w.engine_config, "spec.engine"
    workload = registry.get(kind, name)
    if workload is None:
        return [FieldViolation(f"{path}.{field_name}", f"must be one of {', '.join(registry.names(kind))}")]
    bad = []
    if workload.max_workers is not None and spec.workers > workload.max_workers:
        bad.append(FieldViolation("spec.workers", f"the {name} {kind.value} runs on at most {workload.max_workers} "
                                                  f"worker(s)"))
    config_field = "config" if isinstance(w, Trainer) else "engine_config"
    bad.extend(FieldViolation(f"{path}.{config_field}.{f}", d) for f, d in workload.check_config(config))
    return bad


def _finite_non_negative(x: float) -> bool:
    return math.isfinite(x) and x >= 0
