"""The gateway's admission domain, pure: the fair queue's virtual token counters (VTC, OSDI 2024),
hierarchical (tenants, then the API keys of a tenant), priorities, bounds, limits and
reservations. Tests that name one key per tenant ("k") exercise the tenant level alone."""

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
        q.push("heavy", "k", 1, f"h{i}", cost=10)
    q.push("light", "k", 1, "l0", cost=10)
    # Both start at 0: heavy (earlier) first; then light's 0 < heavy's 10; then heavy's turn again.
    assert drain(q) == ["h0", "l0", "h1", "h2"]
    assert q.counters == {"heavy": 30, "light": 10}


def test_served_output_tokens_advance_the_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", "k", 1, "a0", cost=1)
    assert q.pop() == "a0"
    q.charge("a", "k", 200)  # a long completion streamed
    q.push("b", "k", 1, "b0", cost=1)
    q.push("b", "k", 1, "b1", cost=1)
    q.push("a", "k", 1, "a1", cost=1)
    assert drain(q) == ["b0", "b1", "a1"]


def test_a_newly_active_tenant_is_lifted_to_the_smallest_backlogged_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", "k", 1, "a0", cost=50)
    q.push("b", "k", 1, "b0", cost=50)
    assert q.pop() == "a0"  # a: 50, b still backlogged at 0
    q.charge("b", "k", 30)  # b: 30 (say, an estimate corrected)
    q.push("idle", "k", 1, "i0", cost=1)  # joins at b's 30, not at 0: no credit banked while idle
    assert q.counters["idle"] == 30
    q.push("a", "k", 1, "a1", cost=1)  # a rejoins: its own 50 is above 30 and stays
    assert q.counters["a"] == 50


def test_with_no_backlog_a_tenant_joins_at_the_last_served_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", "k", 1, "a0", cost=100)
    assert q.pop() == "a0"
    q.push("new", "k", 1, "n0", cost=1)
    assert q.counters["new"] == 100


def test_weights_are_applied_by_the_caller_through_the_cost():
    q: FairQueue[str] = FairQueue(100, 100)
    for i in range(4):
        q.push("gold", "k", 1, f"g{i}", cost=5)  # weight 2: half the cost per token
        q.push("std", "k", 1, f"s{i}", cost=10)
    order = drain(q)
    assert [o[0] for o in order[:6]].count("g") == 4  # twice the service while both are backlogged


def test_a_higher_priority_is_served_before_any_counter():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", "k", 1, "a-normal", cost=1)
    q.push("b", "k", 0, "b-low", cost=1)
    q.charge("c", "k", 1000)
    q.push("c", "k", 2, "c-high", cost=1)
    assert drain(q) == ["c-high", "a-normal", "b-low"]


def test_within_a_tenant_its_higher_priority_request_goes_first():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", "k", 0, "low", cost=1)
    q.push("a", "k", 2, "high", cost=1)
    assert drain(q) == ["high", "low"]


def test_fifo_mode_ignores_the_counters():
    q: FairQueue[str] = FairQueue(100, 100, fair=False)
    for i in range(3):
        q.push("heavy", "k", 1, f"h{i}", cost=10)
    q.push("light", "k", 1, "l0", cost=10)
    assert drain(q) == ["h0", "h1", "h2", "l0"]


def test_bounds_per_deployment_and_per_tenant():
    q: FairQueue[str] = FairQueue(3, 2)
    q.push("a", "k", 1, "a0", 1)
    q.push("a", "k", 1, "a1", 1)
    with pytest.raises(QueueFull, match="a/k has 2 requests waiting"):
        q.push("a", "k", 1, "a2", 1)
    q.push("b", "k", 1, "b0", 1)
    with pytest.raises(QueueFull, match="deployment's queue is full"):
        q.push("c", "k", 1, "c0", 1)
    assert len(q) == 3 and q.pop() == "a0"
    q.push("c", "k", 1, "c0", 1)  # room again


def test_a_removed_request_is_not_served_and_frees_its_place():
    q: FairQueue[str] = FairQueue(10, 10)
    e = q.push("a", "k", 1, "a0", 1)
    q.push("a", "k", 1, "a1", 1)
    assert q.remove(e) and not q.remove(e)
    assert drain(q) == ["a1"] and len(q) == 0 and q.queued("a") == 0 and q.queued("a", "k") == 0


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
    q.push("heavy", "k", 1, "h0", cost=1)
    q.push("light", "k", 1, "l0", cost=5)
    assert q.pop(skip_tenants={"light"}) == "h0"
    assert q.pop(skip_tenants={"light"}) is None and len(q) == 1
    assert q.pop() == "l0"


def test_two_keys_of_one_tenant_are_served_fairly_among_themselves():
    q: FairQueue[str] = FairQueue(100, 100)
    for i in range(3):
        q.push("acme", "heavy", 1, f"h{i}", cost=10)
    q.push("acme", "light", 1, "l0", cost=10)
    assert drain(q) == ["h0", "l0", "h1", "h2"]
    assert q.key_counters == {("acme", "heavy"): 30, ("acme", "light"): 10} and q.counters == {"acme": 40}


def test_a_tenant_with_ten_keys_gets_one_share_not_ten():
    q: FairQueue[str] = FairQueue(100, 100)
    for i in range(10):
        q.push("many", f"key{i}", 1, f"m{i}", cost=10)
        q.push("one", "k", 1, f"o{i}", cost=10)
    order = drain(q)
    assert [o[0] for o in order[:10]].count("o") == 5  # alternating by tenant, not 10:1 by key
    assert [o[0] for o in order] == ["m", "o"] * 10


def test_a_tenant_then_its_key_are_lifted_when_they_join_the_backlog():
    q: FairQueue[str] = FairQueue(100, 100)
    q.push("a", "x", 1, "a0", cost=50)
    q.push("b", "y", 1, "b0", cost=5)
    assert q.pop() == "a0" and q.pop() == "b0"  # a: 50, b: 5; nothing waits; b served last
    q.push("a", "z", 1, "a1", cost=1)  # a new key of a joins at a's last served key (x's 50)
    assert q.counters["a"] == 50 and q.key_counters[("a", "z")] == 50
    q.push("c", "w", 1, "c0", cost=1)  # a new tenant joins at the smallest backlogged tenant's 50
    assert q.counters["c"] == 50
    q.push("b", "y", 1, "b1", cost=1)  # b rejoins at 50, not at its own 5: no credit banked
    assert q.counters["b"] == 50


def test_tenant_weights_hold_whatever_the_keys():
    q: FairQueue[str] = FairQueue(100, 100)
    for i in range(4):
        q.push("gold", f"g-key{i % 2}", 1, f"g{i}", cost=5)  # weight 2: half the cost per token
        q.push("std", "s-key", 1, f"s{i}", cost=10)
    order = drain(q)
    assert [o[0] for o in order[:6]].count("g") == 4


def test_keys_at_their_share_wait_while_a_sibling_key_is_served():
    q: FairQueue[str] = FairQueue(10, 10)
    q.push("acme", "heavy", 1, "h0", cost=1)
    q.push("acme", "light", 1, "l0", cost=5)
    assert q.pop(skip_keys={("acme", "heavy")}) == "l0"
    assert q.pop(skip_tenants={"acme"}) is None and q.queued("acme") == 1
    assert q.pop() == "h0"


def test_fifo_mode_orders_across_tenants_and_keys_by_arrival():
    q: FairQueue[str] = FairQueue(100, 100, fair=False)
    q.push("a", "x", 1, "1", cost=10)
    q.push("b", "y", 1, "2", cost=1)
    q.push("a", "z", 1, "3", cost=1)
    q.push("b", "y", 2, "urgent", cost=1)
    assert drain(q) == ["urgent", "1", "2", "3"]
