"""Status conditions in the Kubernetes convention, shaped so kstatus (and so Helm 4's ``--wait``)
reads them: ``Ready`` always present; ``Reconciling`` present (True) only while work is under way,
``Stalled`` present (True) only when the object cannot make progress without a change.

Pure functions: they take the previous conditions and return new ones, never mutating.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

Condition = dict[str, Any]
Progress = Literal["ready", "progressing", "stalled"]

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
# A condition message is kept short: the full text of an error is in the operator's log.
MAX_MESSAGE = 1024


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[Condition], type_: str, status: bool, reason: str, message: str,
                  generation: int, now: datetime) -> list[Condition]:
    """Conditions with ``type_`` set; its lastTransitionTime moves only when its status changes."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") \
        else timestamp(now)
    new = {"type": type_, "status": value, "reason": reason, "message": message[:MAX_MESSAGE],
           "lastTransitionTime": since, "observedGeneration": generation}
    return [c for c in conditions if c.get("type") != type_] + [new]


def drop_condition(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.get("type") != type_]


def summarize(conditions: list[Condition], progress: Progress, reason: str, message: str, generation: int,
              now: datetime) -> list[Condition]:
    """Ready, Reconciling and Stalled for one of the three kstatus outcomes: ready (Current),
    progressing (InProgress) or stalled (Failed)."""
    out = set_condition(conditions, READY, progress == "ready", reason, message, generation, now)
    if progress == "progressing":
        out = set_condition(out, RECONCILING, True, reason, message, generation, now)
    else:
        out = drop_condition(out, RECONCILING)
    if progress == "stalled":
        out = set_condition(out, STALLED, True, reason, message, generation, now)
    else:
        out = drop_condition(out, STALLED)
    return out


def condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def status_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` changes anything (keys of ``new`` only: the status also
    holds kopf's own progress, which is not ours to compare)."""
    return any(old.get(k) != v for k, v in new.items())
