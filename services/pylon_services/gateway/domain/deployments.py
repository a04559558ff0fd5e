"""The deployment record and the pure changes made to it under compare-and-swap.

A record holds the desired replica count and one *slot* per replica: ``{"index", "job"}``. Slot
indexes only grow (``next_index``), so the scheduler request id of a slot's job,
``{uid}-r{index}``, names one job forever: submitting it again (after a crash, or from a
concurrent writer) returns the same job instead of a second one. Scaling down moves the
highest-index slots to ``retired``; their jobs are cancelled and the slots dropped afterwards.
A slot whose job is not known yet has ``job == ""``: the next settle pass submits it (or, when
retired, submits and cancels it, so a job started by a concurrent writer cannot leak).
"""

from __future__ import annotations

import copy
from typing import Any

from pylon_services.common.errors import Aborted, FailedPrecondition, InvalidArgument

MAX_REPLICAS = 16
Doc = dict[str, Any]


def check_replicas(field: str, replicas: int) -> int:
    """``replicas`` if within 1..MAX_REPLICAS, else InvalidArgument naming ``field``."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument.field(field, f"must be between 1 and {MAX_REPLICAS}, got {replicas}")
    return replicas


def new_record(name: str, uid: str, replicas: int, fields: dict[str, Any]) -> Doc:
    """A fresh record whose ``replicas`` slots have no job yet."""
    return {**fields, "name": name, "uid": uid, "replicas": replicas, "next_index": replicas,
            "slots": [{"index": i, "job": ""} for i in range(replicas)], "retired": [], "deleting": False}


def normalized(doc: Doc) -> Doc:
    """The record in its current shape; records written before slots existed held the job names
    of replicas 0..n-1 in ``jobs``."""
    if "slots" not in doc:
        jobs = doc.pop("jobs", [])
        doc["slots"] = [{"index": i, "job": j} for i, j in enumerate(jobs)]
        doc["next_index"] = len(jobs)
    doc.setdefault("retired", [])
    doc.setdefault("deleting", False)
    doc.setdefault("version", 0)
    return doc


def etag(doc: Doc) -> str:
    """Opaque etag: changes on every write; never equal across a delete and a re-create."""
    return f"{doc['uid']}-{doc.get('version', 0)}"


def request_id(doc: Doc, index: int) -> str:
    """The scheduler request id of a slot's job (idempotent submit)."""
    return f"{doc['uid']}-r{index}"


def resize(doc: Doc, replicas: int, expected_etag: str = "") -> Doc:
    """The record with ``replicas`` slots: new slots get fresh indexes, the highest-index slots
    retire. Refuses a stale ``expected_etag`` (Aborted) and a deployment being deleted."""
    if expected_etag and expected_etag != etag(doc):
        raise Aborted(f"{doc['name']} changed since etag {expected_etag!r} (now {etag(doc)!r}); "
                      "read it again and retry")
    if doc["deleting"]:
        raise FailedPrecondition(f"{doc['name']} is being deleted")
    new = copy.deepcopy(doc)
    slots = new["slots"]
    while len(slots) < replicas:
        slots.append({"index": new["next_index"], "job": ""})
        new["next_index"] += 1
    new["retired"].extend(slots[replicas:])
    new["slots"] = slots[:replicas]
    new["replicas"] = replicas
    return new


def retire_all(doc: Doc) -> Doc:
    """The record marked for deletion: every slot retired."""
    new = copy.deepcopy(doc)
    new["retired"].extend(new["slots"])
    new["slots"], new["deleting"] = [], True
    return new


def unsubmitted(doc: Doc) -> list[int]:
    """Indexes of slots (live or retired) whose job is not known yet."""
    return [s["index"] for s in doc["slots"] + doc["retired"] if not s["job"]]


def record_jobs(doc: Doc, jobs: dict[int, str]) -> Doc:
    """The record with the submitted jobs' names filled into their slots (where still empty)."""
    new = copy.deepcopy(doc)
    for slot in new["slots"] + new["retired"]:
        if not slot["job"] and slot["index"] in jobs:
            slot["job"] = jobs[slot["index"]]
    return new


def to_cancel(doc: Doc, submitted: dict[int, str]) -> set[str]:
    """Jobs that must stop: those of retired slots, and any just submitted that no live slot
    holds (its slot was retired and dropped by a concurrent writer meanwhile)."""
    live = {s["job"] for s in doc["slots"]}
    return {s["job"] for s in doc["retired"] if s["job"]} | (set(submitted.values()) - live)


def drop_retired(doc: Doc, jobs: set[str]) -> Doc:
    """The record without the retired slots whose jobs were cancelled."""
    new = copy.deepcopy(doc)
    new["retired"] = [s for s in new["retired"] if not s["job"] or s["job"] not in jobs]
    return new
