"""The deployment record and the pure changes made to it under compare-and-swap.

A record holds the desired replica count and one *slot* per replica. Slot indexes only grow
(``next_index``), so the scheduler request id of a slot's job, ``{uid}-r{index}``, names one job
forever: submitting it again (after a crash, or from a concurrent writer) returns the same job
instead of a second one. Scaling down moves the highest-index slots to ``retired``; their jobs are
cancelled and the slots dropped afterwards. A slot whose job is not known yet has ``job == ""``:
the next settle submits it (or, when retired, submits and cancels it, so a job started by a
concurrent writer cannot leak).

A slot runs the record's ``model_version`` unless it names its own ``version``: the canary slots
of a rollout (``domain/rollouts.py``) run the version on trial, beside the stable slots, and
become ordinary slots when it is promoted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pylon_services.common.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument
from pylon_services.gateway.domain import replacement
from pylon_services.gateway.domain.autoscale import AutoscalePolicy
from pylon_services.gateway.domain.replacement import CrashLoop
from pylon_services.gateway.domain.rollouts import Canary, RolloutEvent, RolloutPolicy, with_event

MAX_REPLICAS = 16
SCALE_EVENTS_KEPT = 20
# The scheduler's priority classes (scheduler/domain/spec.py; a unit test keeps them equal). A
# deployment's replica jobs run at its class: "high" unless it says otherwise, so a deployment
# may preempt lower-priority preemptible training through the scheduler's own preemption.
PRIORITY_CLASSES = ("low", "normal", "high")
DEFAULT_PRIORITY_CLASS = "high"


@dataclass(frozen=True)
class Slot:
    """One replica: its never-reused index and the scheduler job that runs it ("" until known)."""

    index: int
    job: str = ""
    version: str = ""  # "" = the record's model_version

    @property
    def job_id(self) -> str:
        return self.job.rsplit("/", 1)[-1] if self.job else ""


@dataclass(frozen=True)
class DeploymentRecord:
    name: str  # tenants/{t}/deployments/{d}
    uid: str  # distinct for every creation of the name (etags and request ids)
    model_uri: str
    model_version: str
    engine: str
    replicas: int
    gpus: float = 0.0
    gpu_types: tuple[str, ...] = ()
    engine_config: Mapping[str, Any] = field(default_factory=dict)
    create_time: float = 0.0
    request_id: str = ""
    next_index: int = 0
    slots: tuple[Slot, ...] = ()
    retired: tuple[Slot, ...] = ()
    deleting: bool = False
    version: int = 0  # bumped by every stored write (compare-and-swap)
    autoscaling: AutoscalePolicy = field(default_factory=AutoscalePolicy)
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    canary: Canary | None = None
    canary_slots: tuple[Slot, ...] = ()
    rejected_version: str = ""  # rolled back: not tried again until the alias moves elsewhere
    history: tuple[RolloutEvent, ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()
    priority_class: str = DEFAULT_PRIORITY_CLASS  # the scheduler priority class of its replica jobs
    crash_loop: CrashLoop = field(default_factory=CrashLoop)  # replacements of ended replicas
    shared_with: tuple[str, ...] = ()  # other tenants that may send requests ("*": all); domain/sharing.py

    @property
    def tenant(self) -> str:
        return self.name.split("/")[1]

    @property
    def deployment_id(self) -> str:
        return self.name.rsplit("/", 1)[1]

    @property
    def etag(self) -> str:
        """Opaque: changes on every write; never equal across a delete and a re-create."""
        return f"{self.uid}-{self.version}"

    def request_id_of(self, index: int) -> str:
        """The scheduler request id of a slot's job (idempotent submit)."""
        return f"{self.uid}-r{index}"

    def live_job_ids(self) -> set[str]:
        return {s.job_id for s in self.slots + self.canary_slots if s.job}

    def canary_job_ids(self) -> set[str]:
        return {s.job_id for s in self.canary_slots if s.job}

    def version_of(self, index: int) -> str:
        """The model version slot ``index`` runs."""
        slot = next((s for s in self.slots + self.canary_slots + self.retired if s.index == index), None)
        return slot.version if slot and slot.version else self.model_version

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["gpu_types"] = list(self.gpu_types)
        d["engine_config"] = dict(self.engine_config)
        d["shared_with"] = list(self.shared_with)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeploymentRecord:
        """Read a stored record; records written before slots existed held the job names of
        replicas 0..n-1 in ``jobs`` and had no version."""
        if "slots" in d:
            slots = tuple(Slot(**s) for s in d["slots"])
            next_index = int(d["next_index"])
        else:
            slots = tuple(Slot(i, j) for i, j in enumerate(d.get("jobs", [])))
            next_index = len(slots)
        canary = d.get("canary")
        return cls(name=d["name"], uid=d["uid"], model_uri=d.get("model_uri", ""),
                   model_version=d.get("model_version", ""), engine=d.get("engine", "torch"),
                   replicas=int(d["replicas"]), gpus=float(d.get("gpus", 0.0)),
                   gpu_types=tuple(d.get("gpu_types", ())), engine_config=dict(d.get("engine_config") or {}),
                   create_time=float(d.get("create_time", 0.0)), request_id=d.get("request_id", ""),
                   next_index=next_index, slots=slots, retired=tuple(Slot(**s) for s in d.get("retired", [])),
                   deleting=bool(d.get("deleting", False)), version=int(d.get("version") or 0),
                   autoscaling=AutoscalePolicy.from_dict(d.get("autoscaling")),
                   rollout=RolloutPolicy.from_dict(d.get("rollout")),
                   canary=Canary(**canary) if canary else None,
                   canary_slots=tuple(Slot(**s) for s in d.get("canary_slots", [])),
                   rejected_version=d.get("rejected_version", ""),
                   history=tuple(RolloutEvent(**e) for e in d.get("history", [])),
                   scale_events=tuple(ScaleEvent(**e) for e in d.get("scale_events", [])),
                   priority_class=d.get("priority_class") or DEFAULT_PRIORITY_CLASS,
                   crash_loop=CrashLoop.from_dict(d.get("crash_loop")),
                   shared_with=tuple(d.get("shared_with") or ()))


@dataclass(frozen=True)
class ScaleEvent:
    """One change of the replica count: by whom (``autoscaler`` or ``user``) and why."""

    time: float
    from_replicas: int
    to_replicas: int
    by: str
    reason: str


def check_replicas(field_name: str, replicas: int, low: int = 1, high: int = MAX_REPLICAS) -> int:
    """``replicas`` if within low..high, else InvalidArgument naming ``field_name``."""
    if not low <= replicas <= high:
        raise InvalidArgument.field(field_name, f"must be between {low} and {high}, got {replicas}")
    return replicas


def new_record(name: str, uid: str, replicas: int, **fields: Any) -> DeploymentRecord:
    """A fresh record whose ``replicas`` slots have no job yet."""
    fields.setdefault("model_uri", "")
    fields.setdefault("model_version", "")
    fields.setdefault("engine", "torch")
    return DeploymentRecord(name=name, uid=uid, replicas=replicas, next_index=replicas,
                            slots=tuple(Slot(i) for i in range(replicas)), **fields)


def resize(rec: DeploymentRecord, replicas: int, expected_etag: str = "") -> DeploymentRecord:
    """The record with ``replicas`` slots: new slots get fresh indexes, the highest-index slots
    retire. Refuses a stale ``expected_etag`` (Aborted) and a deployment being deleted."""
    if expected_etag and expected_etag != rec.etag:
        raise Aborted(f"{rec.name} changed since etag {expected_etag!r} (now {rec.etag!r}); read it again and retry")
    if rec.deleting:
        raise FailedPrecondition(f"{rec.name} is being deleted")
    slots, next_index = list(rec.slots), rec.next_index
    while len(slots) < replicas:
        slots.append(Slot(next_index))
        next_index += 1
    return dataclasses.replace(rec, replicas=replicas, next_index=next_index, slots=tuple(slots[:replicas]),
                               retired=rec.retired + tuple(slots[replicas:]))


def retire_all(rec: DeploymentRecord) -> DeploymentRecord:
    """The record marked for deletion: every slot retired."""
    return dataclasses.replace(rec, slots=(), canary_slots=(), retired=rec.retired + rec.slots + rec.canary_slots,
                               deleting=True)


def unsubmitted(rec: DeploymentRecord) -> list[int]:
    """Indexes of slots (live, canary or retired) whose job is not known yet."""
    return [s.index for s in rec.slots + rec.canary_slots + rec.retired if not s.job]


def record_jobs(rec: DeploymentRecord, jobs: Mapping[int, str]) -> DeploymentRecord:
    """The record with the submitted jobs' names filled into their slots (where still empty)."""
    def fill(slots: Iterable[Slot]) -> tuple[Slot, ...]:
        return tuple(dataclasses.replace(s, job=jobs[s.index]) if not s.job and s.index in jobs else s for s in slots)

    return dataclasses.replace(rec, slots=fill(rec.slots), canary_slots=fill(rec.canary_slots),
                               retired=fill(rec.retired))


def to_cancel(rec: DeploymentRecord, submitted: Mapping[int, str]) -> set[str]:
    """Jobs that must stop: those of retired slots, and any just submitted that no live slot
    holds (its slot was retired and dropped by a concurrent writer meanwhile)."""
    live = {s.job for s in rec.slots + rec.canary_slots}
    return {s.job for s in rec.retired if s.job} | (set(submitted.values()) - live)


def drop_retired(rec: DeploymentRecord, jobs: set[str]) -> DeploymentRecord:
    """The record without the retired slots whose jobs were cancelled."""
    return dataclasses.replace(rec, retired=tuple(s for s in rec.retired if not s.job or s.job not in jobs))


def autoscale_to(rec: DeploymentRecord, replicas: int, by: str, reason: str, now: float) -> DeploymentRecord:
    """``resize`` to ``replicas`` with the change in the record's scale events (none when the
    count stays)."""
    if replicas == rec.replicas:
        return rec
    event = ScaleEvent(now, rec.replicas, replicas, by, reason[:200])
    out = resize(rec, replicas)
    return dataclasses.replace(out, scale_events=(rec.scale_events + (event,))[-SCALE_EVENTS_KEPT:])


def start_canary(rec: DeploymentRecord, canary: Canary, reason: str) -> DeploymentRecord:
    """The record with ``rollout.canary_replicas`` new slots running ``canary.version``."""
    if rec.deleting or rec.canary is not None:
        return rec
    n = rec.rollout.canary_replicas
    slots = tuple(Slot(rec.next_index + i, version=canary.version) for i in range(n))
    event = RolloutEvent(canary.start_time, rec.model_version, canary.version, "started", reason[:200])
    return dataclasses.replace(rec, canary=canary, canary_slots=slots, next_index=rec.next_index + n,
                               history=with_event(rec.history, event))


def mark_canary_ready(rec: DeploymentRecord, now: float) -> DeploymentRecord:
    if rec.canary is None or rec.canary.ready_time:
        return rec
    return dataclasses.replace(rec, canary=dataclasses.replace(rec.canary, ready_time=now))


def promote(rec: DeploymentRecord, reason: str, now: float) -> DeploymentRecord:
    """The canary's version becomes the deployment's: its slots stay, the stable slots retire,
    and new slots of the new version make up the replica count."""
    if rec.canary is None:
        return rec
    new = rec.canary.version
    keep = tuple(Slot(s.index, s.job) for s in rec.canary_slots)[:rec.replicas]
    extra = rec.canary_slots[len(keep):]
    slots, next_index = list(keep), rec.next_index
    while len(slots) < rec.replicas:
        slots.append(Slot(next_index))
        next_index += 1
    event = RolloutEvent(now, rec.model_version, new, "promoted", reason[:200])
    return dataclasses.replace(rec, model_version=new, slots=tuple(slots), next_index=next_index, canary=None,
                               canary_slots=(), retired=rec.retired + rec.slots + extra,
                               history=with_event(rec.history, event), rejected_version="")


def roll_back(rec: DeploymentRecord, reason: str, now: float, reject: bool = True) -> DeploymentRecord:
    """The canary's slots retired; its version is not tried again (``reject``) until the alias
    moves elsewhere."""
    if rec.canary is None:
        return rec
    event = RolloutEvent(now, rec.model_version, rec.canary.version, "rolled_back", reason[:200])
    return dataclasses.replace(rec, canary=None, canary_slots=(), retired=rec.retired + rec.canary_slots,
                               rejected_version=rec.canary.version if reject else rec.rejected_version,
                               history=with_event(rec.history, event))


def priority_violations(field_name: str, priority_class: str) -> list[FieldViolation]:
    """What is wrong with a deployment's priority class ("" means the default)."""
    if priority_class and priority_class not in PRIORITY_CLASSES:
        return [FieldViolation(field_name, f"must be one of {', '.join(PRIORITY_CLASSES)}, got {priority_class[:64]!r}")]
    return []


def replace_ended(rec: DeploymentRecord, ended: Mapping[str, replacement.EndedJob], ready_indexes: Iterable[int],
                  policy: replacement.ReplacePolicy, now: float) -> DeploymentRecord:
    """The record with the live slots whose jobs ended swapped for new slots (fresh indexes, so a
    fresh scheduler request id each) as ``replacement.decide`` says, the old slots retired, and
    a scale event per replacement. Only slots that still hold an ended job change, so a second
    writer applying the same change to a fresh read changes nothing."""
    if rec.deleting:
        return rec
    loop = replacement.after_ready(rec.crash_loop, ready_indexes)
    here = [ended[s.job] for s in rec.slots if s.job and s.job in ended]
    decision = replacement.decide(loop, here, policy, rec.next_index, now)
    slots, retired, next_index = [], list(rec.retired), rec.next_index
    for s in rec.slots:
        if s.job in decision.replace:
            retired.append(s)
            s = Slot(next_index)
            next_index += 1
        slots.append(s)
    events = tuple(ScaleEvent(now, rec.replicas, rec.replicas, "controller", why[:200]) for why in decision.events)
    return dataclasses.replace(rec, slots=tuple(slots), retired=tuple(retired), next_index=next_index,
                               crash_loop=decision.loop,
                               scale_events=(rec.scale_events + events)[-SCALE_EVENTS_KEPT:])
