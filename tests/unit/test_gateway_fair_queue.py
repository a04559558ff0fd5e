"""The gateway's admission domain, pure: the fair queue's virtual token counters (VTC, OSDI 2024),
priorities, bounds, limits and reservations."""

from __future__ import annotations

import pytest

from pylon_services.common.errors import InvalidArgument
from pylon_services.gateway.domain.admission import (
    FairQueue,
    Limits,
    QueueFull,
    limit_violations,
    request_priority,
    reserved_tokens,
    text_prompt_tokens,
)


def drain(q: FairQueue[str]) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def test_the_backlogged_tenant_with_the_smallest_counter_is_served_first():
    q: FairQueue[str] = FairQueue(100, 100)
    for i in range(3):
        q.push("heavy", 1, f"h{i}", cost=10)
    q.push("light", 1, "l0", cost=10)
    # Both start at 0: heavy (earlier) first; then light's 0 < heavy's 10; then heavy's turn again.
    assert drain(q) == ["h0", "l0", "h1", "h2"]
    assert q.counters == {"heavy": 30, "light": 10}


def test_served_output_tokens_advance_the_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", 1, "a0", cost=1)
    assert q.pop() == "a0"
    q.charge("a", 200)  # a long completion streamed
    q.push("b", 1, "b0", cost=1)
    q.push("b", 1, "b1", cost=1)
    q.push("a", 1, "a1", cost=1)
    assert drain(q) == ["b0", "b1", "a1"]


def test_a_newly_active_tenant_is_lifted_to_the_smallest_backlogged_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", 1, "a0", cost=50)
    q.push("b", 1, "b0", cost=50)
    assert q.pop() == "a0"  # a: 50, b still backlogged at 0
    q.charge("b", 30)  # b: 30 (say, an estimate corrected)
    q.push("idle", 1, "i0", cost=1)  # joins at b's 30, not at 0: no credit banked while idle
    assert q.counters["idle"] == 30
    q.push("a", 1, "a1", cost=1)  # a rejoins: its own 50 is above 30 and stays
    assert q.counters["a"] == 50


def test_with_no_backlog_a_tenant_joins_at_the_last_served_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", 1, "a0", cost=100)
    assert q.pop() == "a0"
    q.push("new", 1, "n0", cost=1)
    assert q.counters["new"] == 100


def test_weights_are_applied_by_the_caller_through_the_cost():
    q: FairQueue[str] = FairQueue(100, 100)
    for i in range(4):
        q.push("gold", 1, f"g{i}", cost=5)  # weight 2: half the cost per token
        q.push("std", 1, f"s{i}", cost=10)
    order = drain(q)
    assert [o[0] for o in order[:6]].count("g") == 4  # twice the service while both are backlogged


def test_a_higher_priority_is_served_before_any_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", 1, "a-normal", cost=1)
    q.push("b", 0, "b-low", cost=1)
    q.charge("c", 1000)
    q.push("c", 2, "c-high", cost=1)
    assert drain(q) == ["c-high", "a-normal", "b-low"]


def test_within_a_tenant_its_higher_priority_request_goes_first():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", 0, "low", cost=1)
    q.push("a", 2, "high", cost=1)
    assert drain(q) == ["high", "low"]


def test_fifo_mode_ignores_the_counters():
    q: FairQueue[str] = FairQueue(100, 100, fair=False)
    for i in range(3):
        q.push("heavy", 1, f"h{i}", cost=10)
    q.push("light", 1, "l0", cost=10)
    assert drain(q) == ["h0", "h1", "h2", "l0"]


def test_bounds_per_deployment_and_per_tenant():
    q: FairQueue[str] = FairQueue(3, 2)
    q.push("a", 1, "a0", 1)
    q.push("a", 1, "a1", 1)
    with pytest.raises(QueueFull, match="a has 2 requests waiting"):
        q.push("a", 1, "a2", 1)
    q.push("b", 1, "b0", 1)
    with pytest.raises(QueueFull, match="deployment's queue is full"):
        q.push("c", 1, "c0", 1)
    assert len(q) == 3 and q.pop() == "a0"
    q.push("c", 1, "c0", 1)  # room again


def test_a_removed_request_is_not_served_and_frees_its_place():
    q: FairQueue[str] = FairQueue(10, 10)
    e = q.push("a", 1, "a0", 1)
    q.push("a", 1, "a1", 1)
    assert q.remove(e) and not q.remove(e)
    assert drain(q) == ["a1"] and len(q) == 0 and q.queued("a") == 0


def test_request_priority_is_capped_by_the_tenant():
    assert request_priority("", Limits()) == 1
    assert request_priority("low", Limits()) == 0
    assert request_priority("HIGH", Limits()) == 1  # normal tenants cannot jump the queue
    assert request_priority("high", Limits(priority="high")) == 2
    with pytest.raises(InvalidArgument) as e:
        request_priority("urgent", Limits())
    assert e.value.violations[0].field == "x-pylon-priority"


def test_reservations_and_limits():
    assert reserved_tokens(10, 16, 3) == 58 and reserved_tokens(10, 16, 0) == 26
    assert text_prompt_tokens("héllo") == 6 + 4  # UTF-8 bytes bound a byte-level BPE's tokens
    assert Limits(tokens_per_min=5).merged({"tokens_per_min": 9, "unknown": 1}) == Limits(tokens_per_min=9)
    assert limit_violations({"tokens_per_min": 10, "priority": "high", "weight": 2}) == []
    bad = limit_violations({"tokens_per_min": -1, "max_concurrent": True, "priority": "x", "weight": 0})
    assert [v.field for v in bad] == ["limits.tokens_per_min", "limits.max_concurrent", "limits.priority",
                                      "limits.weight"]


def test_clients_at_their_share_of_the_slots_are_skipped():
    q: FairQueue[str] = FairQueue(10, 10)
    q.push("heavy", 1, "h0", cost=1)
    q.push("light", 1, "l0", cost=5)
    assert q.pop(skip={"light"}) == "h0"
    assert q.pop(skip={"light"}) is None and len(q) == 1
    assert q.pop() == "l0"
