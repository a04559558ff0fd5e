"""When the leader does what: a pure policy driven by the times it is given.

The leader's loop (``orchestration/leader.py``) asks the ``Pacer`` each turn how long to wait for
events, which periodic chores are due, and whether to run a whole pass, an append pass or none.
Nothing here reads a clock or touches Redis or Ray, so unit tests drive it with plain numbers.

The rules:
- A *whole pass* (every pending job considered) runs soon after a change: an event other than a
  submission, a job the leader moved, a node change, or arrivals an append pass cannot take.
  Passes start at most every ``min_pass_interval_s`` and take at most ``pass_duty_cycle`` of the
  leader's time (the gap after a pass grows with its cost), so a storm of events is decided in
  batches and a costlier pass means fewer passes, not more CPU.
- With nothing new, a whole pass still runs every ``idle_pass_s`` (estimates age; arrivals taken
  by append passes get their fair-share place back), held to ``idle_pass_duty_cycle``.
- An *append pass* decides only new submissions against what the last whole pass left
  (``Policy.extend``); it runs when arrivals are the only news and a whole pass can be continued.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class PassKind(str, Enum):
    NONE = "none"
    WHOLE = "whole"
    APPEND = "append"


class Chore(str, Enum):
    """Periodic work of the leader besides passes."""

    TRACK = "track"  # move every active job forward (launch, start, finish, liveness)
    RECLAIM = "reclaim"  # take over dispatch entries another consumer never acknowledged
    SWEEP = "sweep"  # remove reservations no active attempt owns
    NODES = "nodes"  # notice nodes that joined or died (only needed while continuing a pass)


@dataclass(frozen=True)
class PacingConfig:
    pass_period_s: float = 0.5  # longest idle wait for events
    idle_pass_s: float = 2.0
    min_pass_interval_s: float = 0.2
    pass_duty_cycle: float = 0.25
    idle_pass_duty_cycle: float = 0.05
    reclaim_every_s: float = 5.0
    sweep_every_s: float = 30.0
    nodes_every_s: float = 1.0

    def chore_every(self, chore: Chore) -> float:
        return {Chore.TRACK: self.min_pass_interval_s, Chore.RECLAIM: self.reclaim_every_s,
                Chore.SWEEP: self.sweep_every_s, Chore.NODES: self.nodes_every_s}[chore]


@dataclass(frozen=True)
class Backlog:
    """What the pacer needs to know of the pending queue."""

    arrived: bool  # submissions wait to be read
    changed: bool  # a pending job changed or left (only a whole pass will do)
    can_append: bool  # a whole pass that admitted and preempted nothing may be continued


class Pacer:
    def __init__(self, cfg: PacingConfig) -> None:
        self.cfg = cfg
        self.dirty = True  # something changed that only a whole pass takes in
        self.last_pass = float("-inf")
        self.last_whole = float("-inf")
        self.pass_cost_s = 0.0  # of the last whole pass, not counting waits on the executor
        self._chores = {c: float("-inf") for c in Chore}

    def changed(self) -> None:
        """Something only a whole pass takes in happened."""
        self.dirty = True

    def whole_due(self, b: Backlog) -> bool:
        return self.dirty or b.changed or (b.arrived and not b.can_append)

    def gap(self) -> float:
        """Least time between two whole passes after a change."""
        return max(self.cfg.min_pass_interval_s, self.pass_cost_s / self.cfg.pass_duty_cycle)

    def idle_gap(self) -> float:
        """Least time between whole passes that run only because time passed."""
        return max(self.cfg.idle_pass_s, self.pass_cost_s / self.cfg.idle_pass_duty_cycle)

    def wait_s(self, now: float, b: Backlog) -> float:
        """How long to block waiting for events: until a wanted pass may start, else idle."""
        wait = self.cfg.pass_period_s
        if self.whole_due(b):
            start = max(self.last_whole + self.gap(), self.last_pass + self.cfg.min_pass_interval_s)
            wait = min(wait, start - now)
        elif b.arrived:
            wait = min(wait, self.last_pass + self.cfg.min_pass_interval_s - now)
        return max(0.001, wait)

    def next_pass(self, now: float, b: Backlog) -> PassKind:
        """Which pass to run now; the caller reports it with ``started``."""
        if now - self.last_pass < self.cfg.min_pass_interval_s:
            return PassKind.NONE
        due = self.whole_due(b)
        if now - self.last_whole >= (self.gap() if due else self.idle_gap()):
            return PassKind.WHOLE
        if not due and b.arrived:
            return PassKind.APPEND
        return PassKind.NONE

    def started(self, kind: PassKind, now: float) -> None:
        self.last_pass = now
        if kind == PassKind.WHOLE:
            self.last_whole = now
            self.dirty = False

    def whole_done(self, cost_s: float) -> None:
        self.pass_cost_s = cost_s

    def append_failed(self) -> None:
        """An append pass could not decide its arrivals: the next pass is a whole one."""
        self.dirty = True

    def chore_done(self, chore: Chore, now: float) -> None:
        self._chores[chore] = now

    def chore_due(self, chore: Chore, now: float) -> bool:
        """True (and counted as done now) when ``chore`` is due."""
        if now - self._chores[chore] < self.cfg.chore_every(chore):
            return False
        self._chores[chore] = now
        return True
