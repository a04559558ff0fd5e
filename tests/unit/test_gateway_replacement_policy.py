"""Replacing ended replica jobs (``domain/replacement.py`` and the record change that applies it):
cancelled jobs at once, failed ones after an exponential backoff, a crash loop stopped after
``max_failures`` or at a permanent failure, a ready replacement ending the streak, and a second
writer that applies the same change to a fresh read submitting nothing more; and a deployment's
priority class."""

from __future__ import annotations

import dataclasses
import json

from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain import replacement
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.replacement import CrashLoop, EndedJob, ReplacePolicy
from pylon_services.scheduler.domain.spec import PRIORITY_CLASSES

POLICY = ReplacePolicy(backoff_s=10, backoff_max_s=40, max_failures=3)


def _record(replicas: int = 2) -> DeploymentRecord:
    r = records.new_record("tenants/acme/deployments/chat", "u1", replicas, model_version="v")
    return records.record_jobs(r, {i: f"tenants/acme/jobs/j{i}" for i in range(replicas)})


def _failed(job: str, permanent: bool = False) -> dict[str, EndedJob]:
    return {job: EndedJob(job, "failed", "exit code 1", permanent)}


def test_backoff_doubles_up_to_its_cap():
    assert [POLICY.delay(n) for n in range(6)] == [0, 10, 20, 40, 40, 40]
    assert ReplacePolicy(1, 300, 5).delay(10_000) == 300  # no overflow on a long streak


def test_a_cancelled_replica_is_replaced_at_once_in_a_fresh_slot_without_counting():
    r = _record()
    ended = {"tenants/acme/jobs/j1": EndedJob("tenants/acme/jobs/j1", "cancelled", "cancelled by bob")}
    out = records.replace_ended(r, ended, [0], POLICY, now=100.0)
    assert [(s.index, s.job) for s in out.slots] == [(0, "tenants/acme/jobs/j0"), (2, "")]
    assert records.unsubmitted(out) == [2] and out.next_index == 3 and out.replicas == 2
    assert [s.job for s in out.retired] == ["tenants/acme/jobs/j1"]  # settle cancels (a no-op) and drops it
    assert out.crash_loop == CrashLoop()
    event = out.scale_events[-1]
    assert (event.by, event.from_replicas, event.to_replicas) == ("controller", 2, 2)
    assert event.reason == "replaced replica job tenants/acme/jobs/j1 cancelled: cancelled by bob"


def test_a_second_writer_applying_the_same_replacement_to_a_fresh_read_changes_nothing():
    r = _record()
    ended = _failed("tenants/acme/jobs/j1")
    counted = records.replace_ended(r, ended, [0], POLICY, now=100.0)
    assert records.replace_ended(counted, ended, [0], POLICY, now=100.5) == counted  # no second count
    once = records.replace_ended(counted, ended, [0], POLICY, now=111.0)
    assert records.unsubmitted(once) == [2]
    assert records.replace_ended(once, ended, [0], POLICY, now=111.5) == once  # no second slot


def test_failed_replicas_back_off_and_a_crash_loop_stops_with_the_last_failure():
    r = _record(1)
    seen = records.replace_ended(r, _failed("tenants/acme/jobs/j0"), [], POLICY, now=100.0)
    assert seen.slots == r.slots and not records.unsubmitted(seen)  # counted, waits for the backoff
    assert seen.crash_loop.failures == 1 and seen.crash_loop.not_before == 110.0
    assert seen.crash_loop.waiting == ("tenants/acme/jobs/j0",) and seen.crash_loop.since_index == 1
    assert records.replace_ended(seen, _failed("tenants/acme/jobs/j0"), [], POLICY, now=105.0) == seen  # not twice
    r = records.replace_ended(seen, _failed("tenants/acme/jobs/j0"), [], POLICY, now=110.0)
    assert records.unsubmitted(r) == [1] and r.crash_loop.waiting == () and r.crash_loop.failures == 1
    assert r.scale_events[-1].reason == ("replaced replica job tenants/acme/jobs/j0 failed: exit code 1 "
                                         "(failure 1 of at most 3 in a row; backoff 10s)")
    r = records.record_jobs(r, {1: "tenants/acme/jobs/j1"})
    r = records.replace_ended(r, _failed("tenants/acme/jobs/j1"), [], POLICY, now=200.0)
    assert r.crash_loop.failures == 2 and r.crash_loop.not_before == 220.0 and not records.unsubmitted(r)
    r = records.replace_ended(r, _failed("tenants/acme/jobs/j1"), [], POLICY, now=220.0)
    assert records.unsubmitted(r) == [2] and r.crash_loop.since_index == 1
    r = records.record_jobs(r, {2: "tenants/acme/jobs/j2"})
    stopped = records.replace_ended(r, _failed("tenants/acme/jobs/j2"), [], POLICY, now=300.0)
    assert [s.job for s in stopped.slots] == ["tenants/acme/jobs/j2"] and not records.unsubmitted(stopped)
    assert "after 3 consecutive replica failure(s)" in stopped.crash_loop.stopped
    assert "tenants/acme/jobs/j2 failed: exit code 1" in stopped.crash_loop.stopped
    assert stopped.scale_events[-1].reason.startswith("stopped replacing")
    # Stopped: nothing more is replaced, and the deployment reads FAILED with the reason.
    assert records.replace_ended(stopped, _failed("tenants/acme/jobs/j2"), [], POLICY, now=999.0) == stopped
    state, message = replacement.shown("failed", "every replica job ended without serving", stopped.crash_loop)
    assert state == "failed" and "stopped replacing after 3" in message


def test_a_cancelled_replica_is_replaced_at_once_even_while_a_failed_one_backs_off():
    r = _record(2)
    both = {**_failed("tenants/acme/jobs/j0"),
            "tenants/acme/jobs/j1": EndedJob("tenants/acme/jobs/j1", "cancelled", "cancelled")}
    out = records.replace_ended(r, both, [], POLICY, now=100.0)
    assert [(s.index, s.job) for s in out.slots] == [(0, "tenants/acme/jobs/j0"), (2, "")]
    assert out.crash_loop.failures == 1 and out.crash_loop.waiting == ("tenants/acme/jobs/j0",)


def test_a_failure_the_scheduler_did_not_retry_stops_replacing_at_once():
    r = records.replace_ended(_record(1), _failed("tenants/acme/jobs/j0", permanent=True), [], POLICY, now=100.0)
    assert not records.unsubmitted(r) and r.crash_loop.failures == 1
    assert r.crash_loop.stopped.startswith("not replaced: the scheduler did not retry it")


def test_a_replacement_that_becomes_ready_ends_the_streak_but_an_old_ready_replica_does_not():
    r = records.replace_ended(_record(2), _failed("tenants/acme/jobs/j1"), [0], POLICY, now=100.0)
    r = records.replace_ended(r, _failed("tenants/acme/jobs/j1"), [0], POLICY, now=110.0)
    r = records.record_jobs(r, {2: "tenants/acme/jobs/j2"})
    assert replacement.after_ready(r.crash_loop, [0]) == r.crash_loop  # replica 0 served before the streak
    assert replacement.after_ready(r.crash_loop, [0, 2]) == CrashLoop()
    healed = records.replace_ended(r, {}, [0, 2], POLICY, now=101.0)
    assert healed.crash_loop == CrashLoop() and healed.slots == r.slots


def test_the_view_reads_pending_not_failed_while_a_replacement_is_due():
    loop = CrashLoop(failures=1, since_index=1, not_before=110.0, last="x")
    assert replacement.shown("failed", "every replica job ended", loop)[0] == "pending"
    assert replacement.shown("ready", "1/1 replica(s) ready", loop) == ("ready", "1/1 replica(s) ready")
    assert replacement.shown("deleting", "stopping", CrashLoop(stopped="s")) == ("deleting", "stopping")


def test_deleting_and_canary_slots_are_left_alone():
    r = records.retire_all(_record(1))
    assert records.replace_ended(r, _failed("tenants/acme/jobs/j0"), [], POLICY, now=1.0) == r
    r = _record(1)
    assert records.replace_ended(r, _failed("tenants/acme/jobs/other"), [], POLICY, now=1.0) == r


def test_the_record_keeps_its_priority_class_and_crash_loop_through_storage():
    r = dataclasses.replace(_record(1), priority_class="low", crash_loop=CrashLoop(2, 1, 5.0, ("tenants/acme/jobs/j0",), "l", ""))
    assert DeploymentRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    old = {k: v for k, v in r.to_dict().items() if k not in ("priority_class", "crash_loop")}
    back = DeploymentRecord.from_dict(old)  # written before these fields: the replica jobs ran at "high"
    assert back.priority_class == "high" and back.crash_loop == CrashLoop()


def test_priority_classes_are_the_schedulers_and_a_bad_one_names_the_field():
    assert records.PRIORITY_CLASSES == tuple(PRIORITY_CLASSES)
    assert records.priority_violations("deployment.priority_class", "") == []
    assert records.priority_violations("deployment.priority_class", "low") == []
    bad = records.priority_violations("deployment.priority_class", "urgent")
    assert [v.field for v in bad] == ["deployment.priority_class"] and "low, normal, high" in bad[0].description
