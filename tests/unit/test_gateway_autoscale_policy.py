"""The autoscaling policy and the canary state machine, as pure functions."""

from __future__ import annotations

from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.autoscale import AutoscalePolicy, Signals, Window, desired
from pylon_services.gateway.domain.rollouts import Canary, RolloutPolicy, VersionCounters, judge, next_step

P = AutoscalePolicy(min_replicas=0, max_replicas=4, target_queue=2, target_kv_usage=0.8, target_ttft_ms=500,
                    scale_down_delay_s=30, scale_to_zero_after_s=60)


def _s(ready: int = 1, load: int = 0, held: int = 0, kv: float = 0.0, ttft: float = 0.0, idle: float = 0.0) -> Signals:
    return Signals(ready, load, held, kv, ttft, idle)


def test_scales_up_at_once_on_each_signal_and_caps_at_max() -> None:
    assert desired(P, 1, _s(load=5), Window(), 0)[0] == 3  # ceil(5 / 2)
    assert desired(P, 1, _s(load=50), Window(), 0)[0] == 4  # max
    assert desired(P, 2, _s(ready=2, load=1, kv=0.95), Window(), 0)[0] == 3  # 2 * 0.95 / 0.8
    n, why, _ = desired(P, 2, _s(ready=2, load=1, ttft=900), Window(), 0)
    assert n == 3 and "TTFT" in why  # one more at a time on latency
    assert desired(P, 0, _s(ready=0, held=1), Window(), 0)[0] == 1  # a held request wakes it


def test_scales_down_only_after_a_whole_delay_at_the_lower_count() -> None:
    n, _, w = desired(P, 3, _s(ready=3, load=1), Window(), 100)
    assert n == 3 and w.since == 100
    n, _, w = desired(P, 3, _s(ready=3, load=3), w, 120)  # asks for 2 within the window
    assert n == 3
    n, _, w = desired(P, 3, _s(ready=3, load=1), w, 131)
    assert n == 2  # the window's highest recommendation, not the latest
    n, _, w2 = desired(P, 2, _s(ready=2, load=5), w, 132)
    assert n == 3 and w2 == Window()  # a burst resets the window


def test_goes_to_zero_only_when_idle_long_enough_and_min_holds() -> None:
    assert desired(P, 1, _s(idle=59), Window(), 0)[0] == 1
    assert desired(P, 1, _s(idle=61), Window(), 0)[0] == 0
    floor = AutoscalePolicy(min_replicas=2, max_replicas=4, scale_down_delay_s=3)
    assert desired(floor, 3, _s(ready=3, idle=1000), Window(), 0)[0] == 3  # the window opens
    assert desired(floor, 3, _s(ready=3, idle=1000), Window(1, 2), 5)[0] == 2


def test_canary_is_judged_on_its_own_requests_since_it_started() -> None:
    p = RolloutPolicy(follow_alias=True, min_requests=10, max_error_rate=0.1, max_ttft_ms=200, bake_s=5)
    c = Canary("v2", start_time=0, base_requests=100, base_errors=50, ready_time=10)
    assert judge(p, c, VersionCounters(105, 50), 20)[0] == "wait"  # 5 requests so far
    assert judge(p, c, VersionCounters(112, 51, 1200.0, 12), 20)[0] == "promote"
    assert judge(p, c, VersionCounters(112, 51, 1200.0, 12), 12)[0] == "wait"  # still baking
    verdict, why = judge(p, c, VersionCounters(106, 54), 11)
    assert verdict == "rollback" and "error rate" in why  # early: 4 of 6 failed
    assert judge(p, c, VersionCounters(112, 50, 12 * 300.0, 12), 20)[0] == "rollback"  # slow
    starting = Canary("v2", start_time=0)
    assert judge(p, starting, VersionCounters(), 100)[0] == "wait"
    assert judge(p, starting, VersionCounters(), 601)[0] == "rollback"


def test_alias_moves_start_abandon_or_leave_alone() -> None:
    p = RolloutPolicy(follow_alias=True)
    assert next_step(p, "v1", "v2", None, "") == "start"
    assert next_step(p, "v1", "v1", None, "") == "none"
    assert next_step(p, "v1", "v2", None, "v2") == "none"  # rolled back: not again
    assert next_step(p, "v1", "v3", Canary("v2", 0), "") == "abandon"
    assert next_step(RolloutPolicy(), "v1", "v2", None, "") == "none"


def test_promotion_and_rollback_change_the_slots() -> None:
    rec = records.new_record("tenants/a/deployments/d", "u", 2, model_version="v1",
                             rollout=RolloutPolicy(follow_alias=True, canary_replicas=1))
    rec = records.record_jobs(rec, {0: "j0", 1: "j1"})
    started = records.start_canary(rec, Canary("v2", 5), "alias moved")
    assert [(s.index, s.version) for s in started.canary_slots] == [(2, "v2")]
    assert started.version_of(2) == "v2" and started.version_of(0) == "v1"
    assert records.unsubmitted(started) == [2]
    started = records.record_jobs(started, {2: "j2"})
    promoted = records.promote(started, "healthy", 9)
    assert promoted.model_version == "v2" and [s.index for s in promoted.slots] == [2, 3]
    assert {s.job for s in promoted.retired} == {"j0", "j1"}
    assert [e.outcome for e in promoted.history] == ["started", "promoted"]
    back = records.roll_back(started, "errors", 9)
    assert back.model_version == "v1" and back.rejected_version == "v2" and [s.job for s in back.retired] == ["j2"]
    assert records.DeploymentRecord.from_dict(promoted.to_dict()) == promoted
