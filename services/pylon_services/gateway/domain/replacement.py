"""Replacing a deployment's replica jobs that ended, with a crash-loop guard: a pure policy the
controller applies, like a Kubernetes ReplicaSet with a pod's CrashLoopBackOff.

The scheduler restarts a replica whose attempt fails (its retries); a replica job that *ended*
(retries spent, cancelled by someone through the scheduler, exited, or gone) leaves its slot
empty, and the deployment would run below its count. The controller swaps such a slot for a new
one (a fresh index, so a fresh scheduler request id: a second gateway doing the same swap finds
the slot already swapped under compare-and-swap and submits nothing more).

A replica that *failed* (or exited on its own) counts towards a crash loop when first seen, and
is replaced after an exponential backoff from then (``backoff_s`` doubling with each failure in
a row, up to ``backoff_max_s``); after ``max_failures`` consecutive failures with no replacement becoming ready the
controller stops replacing and the deployment reads FAILED with the last failure. A failure the
scheduler did not retry although retries were left is permanent (the engine said a retry fails
the same way: a model it cannot load), so replacing stops at once. A cancelled or vanished job
is no crash: it is replaced at once and not counted. A replica started after the streak began
that becomes ready ends the streak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ENDED_STATES = ("failed", "exited", "cancelled", "gone")
_FAILURES = ("failed", "exited")


@dataclass(frozen=True)
class ReplacePolicy:
    """How the controller replaces failed replicas (the gateway's settings, not a deployment's)."""

    backoff_s: float = 10.0
    backoff_max_s: float = 300.0
    max_failures: int = 5

    def delay(self, failures: int) -> float:
        """Seconds before the replacement after the ``failures``-th consecutive failure."""
        if failures <= 0:
            return 0.0
        return float(min(self.backoff_s * 2 ** min(failures - 1, 30), self.backoff_max_s))


@dataclass(frozen=True)
class CrashLoop:
    """A deployment's streak of replica failures, kept in its record."""

    failures: int = 0  # consecutive failed replicas since a replacement last became ready
    since_index: int = 0  # slots from this index on started after the streak began
    not_before: float = 0.0  # the failed replicas in ``waiting`` are replaced from this time on
    waiting: tuple[str, ...] = ()  # failed jobs counted, whose replacement waits for the backoff
    last: str = ""  # the last failure, as a line
    stopped: str = ""  # why replacing stopped ("" while it goes on)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> CrashLoop:
        if not d:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in d.items() if k in names}
        fields["waiting"] = tuple(fields.get("waiting", ()))
        return cls(**fields)


@dataclass(frozen=True)
class EndedJob:
    """A replica job that is over, as the scheduler reports it."""

    job: str
    state: str  # one of ENDED_STATES
    message: str = ""
    permanent: bool = False  # failed with retries left: the scheduler was told a retry fails the same way

    @property
    def failure(self) -> bool:
        return self.state in _FAILURES

    def line(self) -> str:
        return f"replica job {self.job} {self.state}: {self.message}"[:300]


@dataclass(frozen=True)
class Decision:
    """What to do with a deployment's ended replicas now."""

    replace: tuple[str, ...]  # jobs whose slots get a new replica now
    loop: CrashLoop  # the streak to keep
    events: tuple[str, ...]  # one reason per scale event to record


def after_ready(loop: CrashLoop, ready_indexes: Iterable[int]) -> CrashLoop:
    """The streak ended (a fresh CrashLoop) once a replica started since it began serves."""
    if (loop.failures or loop.stopped) and any(i >= loop.since_index for i in ready_indexes):
        return CrashLoop()
    return loop


def decide(loop: CrashLoop, ended: Iterable[EndedJob], policy: ReplacePolicy, next_index: int,
           now: float) -> Decision:
    """Which ended replicas to replace now and the streak after it. Cancelled or vanished jobs are
    replaced at once. A failure is counted when first seen, and the failed replicas are replaced
    once the backoff its count sets has passed; ``max_failures`` (or a permanent failure) stops
    replacing altogether."""
    ended = sorted(ended, key=lambda e: e.job)
    if loop.stopped or not ended:
        return Decision((), loop, ())
    failed = [e for e in ended if e.failure]
    replace = [e.job for e in ended if not e.failure]
    events = [f"replaced {e.line()}" for e in ended if not e.failure]
    # Jobs counted earlier whose slots are gone meanwhile (scaled down) wait for nothing.
    loop = dataclasses.replace(loop, waiting=tuple(j for j in loop.waiting if j in {e.job for e in failed}))
    new = [e for e in failed if e.job not in loop.waiting]
    if new:
        n = loop.failures + len(new)
        permanent = next((e for e in new if e.permanent), None)
        if permanent is not None or n >= policy.max_failures:
            why = (f"not replaced: the scheduler did not retry it, a retry fails the same way; {permanent.line()}"
                   if permanent is not None else
                   f"stopped replacing after {n} consecutive replica failure(s); the last: {new[-1].line()}")
            return Decision((), dataclasses.replace(loop, failures=n, last=new[-1].line(), stopped=why[:300]),
                            (why,))
        loop = CrashLoop(failures=n, since_index=loop.since_index if loop.failures else next_index,
                         not_before=now + policy.delay(n), waiting=loop.waiting + tuple(e.job for e in new),
                         last=new[-1].line())
    due = [e for e in failed if e.job in loop.waiting] if now >= loop.not_before else []
    if due:
        replace += [e.job for e in due]
        events += [f"replaced {e.line()} (failure {loop.failures} of at most {policy.max_failures} in a row; "
                   f"backoff {policy.delay(loop.failures):g}s)" for e in due]
        loop = dataclasses.replace(loop, waiting=tuple(j for j in loop.waiting if j not in replace))
    return Decision(tuple(replace), loop, tuple(events))


def shown(state: str, message: str, loop: CrashLoop) -> tuple[str, str]:
    """A deployment's (state, message) with its replacements: FAILED with the reason once replacing
    stopped; PENDING, not FAILED, while ended replicas are still to be replaced."""
    if state == "deleting":
        return state, message
    if loop.stopped:
        return state, f"{message}; {loop.stopped}"[:1000]
    if state == "failed":
        return "pending", (f"{message}; the controller replaces it ({loop.failures} consecutive failure(s) "
                           "so far)")[:1000]
    return state, message
