"""The leader's pacing as a pure policy: given times and what is new in the backlog, when does a
whole pass, an append pass or a chore run, and how long does the leader wait for events."""

from __future__ import annotations

import pytest

from pylon_services.scheduler.domain.pacing import Backlog, Chore, Pacer, PacingConfig, PassKind

# Binary-exact periods, so sums and differences of the times below compare exactly.
CFG = PacingConfig(pass_period_s=0.5, idle_pass_s=2.0, min_pass_interval_s=0.25, pass_duty_cycle=0.25,
                   idle_pass_duty_cycle=0.0625, reclaim_every_s=5.0, nodes_every_s=1.0)
QUIET = Backlog(arrived=False, changed=False, can_append=True)
ARRIVALS = Backlog(arrived=True, changed=False, can_append=True)


def _after_whole(now: float, cost_s: float = 0.0) -> Pacer:
    p = Pacer(CFG)
    assert p.next_pass(now, QUIET) == PassKind.WHOLE  # a new pacer is dirty: a whole pass first
    p.started(PassKind.WHOLE, now)
    p.whole_done(cost_s)
    return p


def test_a_change_brings_a_whole_pass_after_the_minimum_interval():
    p = _after_whole(10.0)
    assert p.next_pass(10.125, QUIET) == PassKind.NONE
    p.changed()
    assert p.next_pass(10.125, QUIET) == PassKind.NONE  # passes start at most every 0.25 s
    assert p.wait_s(10.125, QUIET) == pytest.approx(0.125)  # the wait ends when the pass may start
    assert p.next_pass(10.25, QUIET) == PassKind.WHOLE


def test_a_costly_pass_stretches_the_gap_to_hold_the_duty_cycle():
    p = _after_whole(10.0, cost_s=1.0)  # 1 s of work: at most 25% of the time -> 4 s apart
    p.changed()
    assert p.gap() == pytest.approx(4.0)
    assert p.next_pass(13.9, QUIET) == PassKind.NONE
    assert p.wait_s(13.0, QUIET) == pytest.approx(0.5)  # never longer than the idle wait
    assert p.next_pass(14.0, QUIET) == PassKind.WHOLE


def test_arrivals_alone_get_append_passes_and_time_alone_a_whole_one():
    p = _after_whole(10.0)
    assert p.next_pass(10.25, ARRIVALS) == PassKind.APPEND
    p.started(PassKind.APPEND, 10.25)
    assert p.next_pass(10.375, ARRIVALS) == PassKind.NONE  # the minimum interval holds for appends too
    assert p.next_pass(10.5, ARRIVALS) == PassKind.APPEND
    assert p.next_pass(11.875, QUIET) == PassKind.NONE
    assert p.next_pass(12.0, QUIET) == PassKind.WHOLE  # idle_pass_s after the last whole pass


def test_idle_whole_passes_hold_their_own_duty_cycle():
    p = _after_whole(10.0, cost_s=0.5)  # 0.5 s at 6.25% -> 8 s between time-only passes
    assert p.idle_gap() == pytest.approx(8.0)
    assert p.next_pass(17.875, QUIET) == PassKind.NONE
    assert p.next_pass(18.0, QUIET) == PassKind.WHOLE


def test_arrivals_that_cannot_be_appended_need_a_whole_pass():
    p = _after_whole(10.0)
    cannot = Backlog(arrived=True, changed=False, can_append=False)
    assert p.whole_due(cannot) and p.next_pass(10.25, cannot) == PassKind.WHOLE
    changed = Backlog(arrived=True, changed=True, can_append=True)
    assert p.next_pass(10.25, changed) == PassKind.WHOLE
    p = _after_whole(10.0)
    p.append_failed()
    assert p.next_pass(10.25, ARRIVALS) == PassKind.WHOLE


def test_the_wait_for_events_is_the_idle_period_when_nothing_is_due():
    p = _after_whole(10.0)
    assert p.wait_s(10.0, QUIET) == pytest.approx(0.5)
    assert p.wait_s(10.125, ARRIVALS) == pytest.approx(0.125)  # an append may start at 10.25
    assert p.wait_s(11.0, ARRIVALS) == pytest.approx(0.001)  # due now: the shortest wait


def test_chores_run_on_their_own_periods():
    p = Pacer(CFG)
    assert p.chore_due(Chore.RECLAIM, 0.0) and not p.chore_due(Chore.RECLAIM, 4.9)
    assert p.chore_due(Chore.RECLAIM, 5.0)
    assert p.chore_due(Chore.TRACK, 0.0) and not p.chore_due(Chore.TRACK, 0.125) and p.chore_due(Chore.TRACK, 0.25)
    p.chore_done(Chore.SWEEP, 0.0)
    assert not p.chore_due(Chore.SWEEP, 29.9) and p.chore_due(Chore.SWEEP, 30.0)
    assert p.chore_due(Chore.NODES, 0.0) and not p.chore_due(Chore.NODES, 0.5) and p.chore_due(Chore.NODES, 1.0)
