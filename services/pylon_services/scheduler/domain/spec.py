"""What a user submits: ``JobSpec`` and its workload, typed, validated once at the API boundary.

The API converts the request's proto into a ``JobSpec`` (``api/convert.py``), ``validate_spec``
checks it against the workload registry (``pylon_services.workloads``: trainer and engine names,
their config checks and worker limits, all torch-free), and from then on every part of the
scheduler reads typed fields. The ledger stores ``to_dict()``: the proto's JSON field names, so
records written before this module existed still load with ``from_dict``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pylon_services.common.errors import FieldViolation, InvalidArgument
from pylon_services.common.limits import json_violations
from pylon_services.common.names import ID_RE, ID_RULE
from pylon_services.scheduler.domain.scheduling import Demand
from pylon_services.workloads import REGISTRY, WorkloadKind, WorkloadRegistry

# Priority classes (Kueue's WorkloadPriorityClass): higher admits first and may preempt lower.
PRIORITY_CLASSES = {"low": 0, "normal": 100, "high": 1000}
PLACEMENTS = ("pack", "spread")

# Limits of a spec (docs in scheduler.proto). They bound a stored job to a few hundred KiB, so a
# ListJobs page stays under the message limit, and they keep numbers where Redis, JSON (orjson:
# 64-bit integers) and Ray take them.
MAX_WORKERS = 1024
MAX_GPUS_PER_WORKER = 64.0
MAX_CPUS_PER_WORKER = 1024.0
MAX_MEMORY_BYTES = 1 << 44  # 16 TiB per worker
MAX_RETRIES = 100
MAX_STEPS = 10**12  # total_steps and checkpoint_every_steps
MAX_RUNTIME_S = 30 * 86400.0
MAX_STALL_TIMEOUT_S = 7 * 86400.0
MAX_NAME_CHARS = 256  # display_name, label values, gpu types, job_type, resource names
MAX_LABELS = 64
MAX_GPU_TYPES = 16
MAX_DATASETS = 64
MAX_ARGV = 1024
MAX_ARGV_BYTES = 128 * 1024  # all of argv together
MAX_ENV = 256
MAX_ENV_BYTES = 128 * 1024  # all of env together, keys and values
MAX_PIP_REQUIREMENTS = 128
MAX_PIP_REQUIREMENT_CHARS = 512
MAX_CONFIG_BYTES = 64 * 1024  # a trainer's config or an engine's engine_config, as JSON
MAX_CONFIG_DEPTH = 16
QUEUE_RE = re.compile(r"[A-Za-z0-9-]{1,63}")
QUEUE_RULE = "must be 1-63 ASCII letters, digits or '-'"
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9._/-]{1,128}")
LABEL_KEY_RULE = "keys must be 1-128 ASCII letters, digits, '.', '_', '/' or '-'"
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
GPU_TYPE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Resources:
    """What one worker needs."""

    gpus: float = 0.0
    cpus: float = 1.0
    memory_bytes: int = 0
    # Acceptable GPU types in order of preference; empty means any.
    gpu_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenData:
    """One dataset version's tokenization, pinned at submit for a trainer that reads tokens:
    what it needs to read the shards and the tokenizer without another lookup (the stored form
    is the proto's ``PinnedTokens`` with its JSON names, ``to_dict``)."""

    dataset_version: str  # tenants/{t}/datasets/{d}/versions/{n}
    tokenization: str  # .../versions/{n}/tokenizations/{tokenizer}
    tokenizer: str  # the tokenizer's id
    tokenizer_object_key: str
    tokenizer_digest: str
    index_object_key: str
    shard_prefix: str
    total_tokens: int = 0
    shard_count: int = 0
    vocab_size: int = 0
    dtype: str = ""
    dataset_digest: str = ""  # the tokenized version's content digest (lineage)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenData:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Trainer:
    """A registered trainer (``workloads`` registry) on dataset versions, maybe from a base model."""

    trainer: str
    config: Mapping[str, Any] = field(default_factory=dict)
    # Pinned at submit: each "tenants/{t}/datasets/{d}/versions/{n}" with its number, never "latest".
    datasets: tuple[str, ...] = ()
    base_model: str = ""
    # Set at submit: the exact version ``base_model`` resolved to and its files' object keys,
    # so retries and resumes use them even if the alias moves.
    base_model_version: str = ""
    base_model_files: Mapping[str, str] = field(default_factory=dict)
    # Set at submit for a workload that reads tokens: each dataset's tokenization, in order.
    token_data: tuple[TokenData, ...] = ()
    # Where the trainer registers what it trained on success (model id in the job's tenant, and an
    # alias to point at the new version); empty: nothing is registered.
    register_model: str = ""
    register_alias: str = ""


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
    # A running attempt without step progress for this long is ended as stalled; 0 = off.
    stall_timeout_s: float = 0.0

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
        if self.stall_timeout_s:
            d["stall_timeout"] = f"{self.stall_timeout_s:g}s"
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
            total_steps=int(d.get("total_steps") or 0), stall_timeout_s=duration_seconds(d.get("stall_timeout")))


def _workload_dict(w: Workload) -> dict[str, Any]:
    if isinstance(w, Trainer):
        out: dict[str, Any] = {"trainer": w.trainer, "config": dict(w.config), "datasets": list(w.datasets),
                               "base_model": w.base_model, "base_model_version": w.base_model_version}
        if w.base_model_files:
            out["base_model_files"] = dict(w.base_model_files)
        if w.token_data:
            out["token_data"] = [t.to_dict() for t in w.token_data]
        if w.register_model or w.register_alias:
            out["register_model"] = {"model": w.register_model, "alias": w.register_alias}
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
                       base_model_files=dict(t.get("base_model_files") or {}),
                       token_data=tuple(TokenData.from_dict(x) for x in t.get("token_data") or ()),
                       register_model=(t.get("register_model") or {}).get("model") or "",
                       register_alias=(t.get("register_model") or {}).get("alias") or "")
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
        raise invalid(bad)


def invalid(bad: list[FieldViolation]) -> InvalidArgument:
    """One InvalidArgument for several violations; the message lists them (bounded: each
    description is short and never holds a whole input)."""
    return InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in bad[:20]), bad[:100])


def common_violations(spec: JobSpec) -> list[FieldViolation]:
    """What is wrong with ``spec`` apart from its workload."""
    bad: list[FieldViolation] = []
    r = spec.resources
    if not 1 <= spec.workers <= MAX_WORKERS:
        bad.append(FieldViolation("spec.workers", f"must be between 1 and {MAX_WORKERS}"))
    if not (_finite_between(r.gpus, 0, MAX_GPUS_PER_WORKER) and _finite_between(r.cpus, 0, MAX_CPUS_PER_WORKER)):
        bad.append(FieldViolation("spec.resources", f"gpus and cpus must be finite, gpus between 0 and "
                                                    f"{MAX_GPUS_PER_WORKER:g}, cpus between 0 and {MAX_CPUS_PER_WORKER:g}"))
    if not 0 <= r.memory_bytes <= MAX_MEMORY_BYTES:
        bad.append(FieldViolation("spec.resources.memory_bytes", f"must be between 0 and {MAX_MEMORY_BYTES} (16 TiB)"))
    bad += _list_violations("spec.resources.gpu_types", r.gpu_types, MAX_GPU_TYPES,
                            lambda t: "" if GPU_TYPE_RE.fullmatch(t) else "must be 1-64 ASCII letters, digits, "
                                                                          "'.', '_' or '-'")
    if spec.placement not in PLACEMENTS:
        bad.append(FieldViolation("spec.placement", f"must be one of {', '.join(PLACEMENTS)}"))
    if not 0 <= spec.max_retries <= MAX_RETRIES:
        bad.append(FieldViolation("spec.max_retries", f"must be between 0 and {MAX_RETRIES}"))
    if not _finite_between(spec.max_runtime_s, 0, MAX_RUNTIME_S):
        bad.append(FieldViolation("spec.max_runtime", "must be between 0 (no limit) and 30 days"))
    if not _finite_between(spec.stall_timeout_s, 0, MAX_STALL_TIMEOUT_S):
        bad.append(FieldViolation("spec.stall_timeout", "must be between 0 (off) and 7 days"))
    if spec.priority_class not in PRIORITY_CLASSES:
        bad.append(FieldViolation("spec.priority_class", f"must be one of {', '.join(PRIORITY_CLASSES)}"))
    if not QUEUE_RE.fullmatch(spec.queue):
        bad.append(FieldViolation("spec.queue", QUEUE_RULE))
    if not 0 <= spec.total_steps <= MAX_STEPS:
        bad.append(FieldViolation("spec.total_steps", f"must be between 0 and {MAX_STEPS}"))
    if not 0 <= spec.checkpoint_every_steps <= MAX_STEPS:
        bad.append(FieldViolation("spec.checkpoint_every_steps", f"must be between 0 (the trainer's default) and "
                                                                 f"{MAX_STEPS}"))
    for name, value in (("display_name", spec.display_name), ("job_type", spec.job_type)):
        if why := _text_problem(value, MAX_NAME_CHARS):
            bad.append(FieldViolation(f"spec.{name}", why))
    return bad + _label_violations(spec.labels)


def _label_violations(labels: Mapping[str, str]) -> list[FieldViolation]:
    if len(labels) > MAX_LABELS:
        return [FieldViolation("spec.labels", f"at most {MAX_LABELS} labels")]
    bad = []
    for n, (key, value) in enumerate(sorted(labels.items())):
        if not LABEL_KEY_RE.fullmatch(key):
            bad.append(FieldViolation(f"spec.labels[{n}]", LABEL_KEY_RULE))
        elif why := _text_problem(value, MAX_NAME_CHARS):
            bad.append(FieldViolation(f"spec.labels[{key}]", f"value {why}"))
    return bad


def _workload_violations(spec: JobSpec, registry: WorkloadRegistry) -> list[FieldViolation]:
    w = spec.workload
    if isinstance(w, Command):
        return command_violations(w)
    if isinstance(w, Trainer):
        kind, field_name, name, config, path = WorkloadKind.TRAINER, "trainer", w.trainer, w.config, "spec.trainer"
        config_field = "config"
        bad = _list_violations("spec.trainer.datasets", w.datasets, MAX_DATASETS, lambda d: _text_problem(d, 512))
        if why := _text_problem(w.base_model, MAX_NAME_CHARS):
            bad.append(FieldViolation("spec.trainer.base_model", why))
        bad += register_violations(w)
    else:
        kind, field_name, name, config, path = WorkloadKind.ENGINE, "engine", w.engine, w.engine_config, "spec.engine"
        config_field = "engine_config"
        bad = [FieldViolation(f"spec.engine.{f}", why) for f, v in (("deployment", w.deployment),
                                                                   ("model_version", w.model_version))
               if (why := _text_problem(v, MAX_NAME_CHARS))]
    config_bad = config_violations(f"{path}.{config_field}", config)
    workload = registry.get(kind, name)
    if workload is None:
        return [FieldViolation(f"{path}.{field_name}", f"must be one of {', '.join(registry.names(kind))}"),
                *bad, *config_bad]
    if workload.max_workers is not None and spec.workers > workload.max_workers:
        bad.append(FieldViolation("spec.workers", f"the {name} {kind.value} runs on at most {workload.max_workers} "
                                                  f"worker(s)"))
    if isinstance(w, Trainer) and w.base_model and not workload.base_model_formats:
        bad.append(FieldViolation("spec.trainer.base_model", f"the {name} trainer fine-tunes no base model"))
    most_gpus = workload.max_gpus_per_worker
    if most_gpus is not None and math.isfinite(spec.resources.gpus) and spec.resources.gpus > most_gpus:
        bad.append(FieldViolation("spec.resources.gpus_per_worker", f"{name} runs one process per GPU: ask for "
                                                                    f"more workers instead"))
    if config_bad:  # the workload's own check sees only well-formed JSON
        return bad + config_bad
    return bad + [FieldViolation(f"{path}.{config_field}.{_clip(f, 64)}", _clip(d, 200))
                  for f, d in workload.check_config(config)]


def register_violations(t: Trainer) -> list[FieldViolation]:
    """Where a trainer registers its model: ids by the registry's rules (checked here so a job
    never trains for hours to fail at registering)."""
    bad = []
    if t.register_model and not ID_RE.fullmatch(t.register_model):
        bad.append(FieldViolation("spec.trainer.register_model.model", ID_RULE))
    if t.register_alias and not t.register_model:
        bad.append(FieldViolation("spec.trainer.register_model.model", "is required when an alias is given"))
    if t.register_alias and not ID_RE.fullmatch(t.register_alias):
        bad.append(FieldViolation("spec.trainer.register_model.alias", ID_RULE))
    elif t.register_alias == "latest":
        bad.append(FieldViolation("spec.trainer.register_model.alias", "'latest' is reserved"))
    return bad


def command_violations(c: Command) -> list[FieldViolation]:
    """Sizes and characters of a command: argv and env end up in exec(), which refuses NUL."""
    bad = []
    if not c.argv:
        bad.append(FieldViolation("spec.command.argv", "must not be empty"))
    bad += _list_violations("spec.command.argv", c.argv, MAX_ARGV, lambda a: "must not contain NUL" if "\0" in a else "")
    if sum(len(a.encode()) for a in c.argv) > MAX_ARGV_BYTES:
        bad.append(FieldViolation("spec.command.argv", f"must be at most {MAX_ARGV_BYTES >> 10} KiB in all"))
    bad += _list_violations("spec.command.datasets", c.datasets, MAX_DATASETS, lambda d: _text_problem(d, 512))
    bad += _list_violations("spec.command.pip_requirements", c.pip_requirements, MAX_PIP_REQUIREMENTS,
                            lambda p: _text_problem(p, MAX_PIP_REQUIREMENT_CHARS) or ("" if p.strip() else "is empty"))
    if len(c.env) > MAX_ENV:
        bad.append(FieldViolation("spec.command.env", f"at most {MAX_ENV} variables"))
    elif sum(len(k.encode()) + len(v.encode()) for k, v in c.env.items()) > MAX_ENV_BYTES:
        bad.append(FieldViolation("spec.command.env", f"must be at most {MAX_ENV_BYTES >> 10} KiB in all"))
    else:
        for key, value in sorted(c.env.items()):
            if not ENV_KEY_RE.fullmatch(key):
                bad.append(FieldViolation("spec.command.env", "names must be ASCII letters, digits or '_', "
                                                              "not starting with a digit, at most 256"))
                break
            if "\0" in value:
                bad.append(FieldViolation(f"spec.command.env[{key}]", "must not contain NUL"))
    if len(c.working_dir_key) > 1024:
        bad.append(FieldViolation("spec.command.working_dir_key", "is not a key UploadWorkingDir returns"))
    return bad


def config_violations(path: str, config: Mapping[str, Any]) -> list[FieldViolation]:
    """A workload's JSON settings: finite numbers only, at most ``MAX_CONFIG_DEPTH`` levels and
    ``MAX_CONFIG_BYTES`` (``common.limits.json_violations``)."""
    return json_violations(path, config, max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH)


def _list_violations(path: str, values: Iterable[str], most: int, problem: Any) -> list[FieldViolation]:
    """At most ``most`` items, each without a ``problem`` (a function returning "" when fine)."""
    items = list(values)
    if len(items) > most:
        return [FieldViolation(path, f"at most {most} entries")]
    return [FieldViolation(f"{path}[{n}]", why) for n, v in enumerate(items) if (why := problem(v))][:10]


def _text_problem(value: str, most: int) -> str:
    """Why ``value`` is not a short line of text ("" when it is)."""
    if len(value) > most:
        return f"must be at most {most} characters"
    if _CONTROL.search(value):
        return "must not contain control characters"
    return ""


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most] + "..."


def _finite_between(x: float, low: float, high: float) -> bool:
    return math.isfinite(x) and low <= x <= high
