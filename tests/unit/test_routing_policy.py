"""The gateway's router (``gateway/domain/routing.py``): prefix hashes, least outstanding tokens,
prefix affinity within its load bound, session affinity, exclusions, and the load released as a
request's tokens are processed."""

from __future__ import annotations

from pylon_services.gateway.domain.routing import (
    ReplicaView,
    Router,
    RoutingConfig,
    prefix_hashes,
)

CFG = RoutingConfig(block_tokens=4, block_chars=8, load_bound_tokens=100, other_request_tokens=50,
                    kv_full_tokens=1000)


def _replicas(**kw: object) -> list[ReplicaView]:
    return [ReplicaView("a", "h:1", 0.0, 0, **kw), ReplicaView("b", "h:2", 0.0, 0, **kw)]  # type: ignore[arg-type]


def test_prefix_hashes_are_chained_over_full_blocks():
    a = prefix_hashes(list(range(10)), "", CFG)
    b = prefix_hashes([*range(8), 99, 98], "", CFG)
    c = prefix_hashes([7, *range(1, 10)], "", CFG)
    assert len(a) == 2 and a == b  # the partial third block is not hashed
    assert a[0] != c[0] and a[1] != c[1]  # a differing first block changes every later hash
    text = prefix_hashes("", "x" * 8 + "y" * 8 + "z" * 3, CFG)
    assert len(text) == 2 and text[0] != text[1]
    assert prefix_hashes(list(range(10_000)), "", CFG) and len(prefix_hashes(list(range(10_000)), "", CFG)) == CFG.max_blocks


def test_least_outstanding_tokens_counts_own_requests_heartbeats_and_kv_use():
    router = Router(CFG)
    a, b = _replicas()
    first = router.choose([a, b])
    assert first is not None and first.reason == "least_load" and first.replica is a  # tie: by address
    ticket = router.start(first, (), "", prompt_tokens=30, max_new_tokens=10)
    assert router.load(a) == 40 and router.choose([a, b]).replica is b  # type: ignore[union-attr]
    router.progress(ticket, 1)  # the prompt is done at the first token
    assert router.load(a) == 9
    router.finish(ticket)
    assert router.load(a) == 0 and router.in_flight("h:1") == 0
    busy_elsewhere = ReplicaView("a", "h:1", 0.0, running=3)  # three requests another gateway sent
    assert router.load(busy_elsewhere) == 150
    full_kv = ReplicaView("b", "h:2", 0.0, 0, kv_usage=0.5)
    assert router.load(full_kv) == 500
    assert router.choose([busy_elsewhere, full_kv]).replica is busy_elsewhere  # type: ignore[union-attr]


def test_prefix_affinity_wins_within_the_load_bound_and_not_beyond():
    router = Router(CFG)
    a, b = _replicas()
    shared = prefix_hashes(list(range(16)), "", CFG)
    d = router.choose([a, b], shared)
    assert d is not None and d.reason == "prefix_miss"
    held = router.start(d, shared, "", 16, 50)  # replica a now holds the prefix, and 66 tokens
    again = router.choose([a, b], shared)
    assert again is not None and (again.reason, again.replica, again.matched_blocks) == ("prefix_hit", a, 4)
    longer = prefix_hashes([*range(16), 5, 5, 5, 5], "", CFG)
    assert router.choose([a, b], longer).replica is a  # type: ignore[union-attr]
    other = prefix_hashes([9] * 16, "", CFG)
    assert router.choose([a, b], other).replica is b  # type: ignore[union-attr]  # a miss goes to the least loaded
    overload = router.start(again, shared, "", 16, 50)  # a: 132 tokens, 132 more than b, over the bound of 100
    beyond = router.choose([a, b], shared)
    assert beyond is not None and (beyond.reason, beyond.replica) == ("prefix_miss", b)
    router.finish(overload)
    router.finish(held)
    assert router.choose([b], shared).replica is b  # type: ignore[union-attr]  # the holder is not healthy: another


def test_session_affinity_and_exclusions():
    router = Router(CFG)
    a, b = _replicas()
    router.start(router.choose([a, b], session="s1"), (), "s1", 10, 10)  # type: ignore[arg-type]
    t = router.start(router.choose([a, b]), (), "", 5, 5)  # type: ignore[arg-type]
    assert t.address == "h:2"
    router.finish(t)
    assert router.choose([a, b], session="s1").reason == "session"  # type: ignore[union-attr]
    assert router.choose([a, b], session="s1", exclude=["h:1"]).replica is b  # type: ignore[union-attr]
    assert router.choose([a, b], exclude=["h:1", "h:2"]) is None
    assert router.choose([]) is None


def test_round_robin_and_least_load_policies():
    rr = Router(RoutingConfig(policy="round_robin"))
    a, b = _replicas()
    picks = [rr.choose([a, b], prefix_hashes(list(range(64)), "", rr.cfg)).replica.address for _ in range(4)]  # type: ignore[union-attr]
    assert picks == ["h:2", "h:1", "h:2", "h:1"]
    ll = Router(RoutingConfig(policy="least_load"))
    d = ll.choose([a, b], prefix_hashes(list(range(64)), "", ll.cfg))
    assert d is not None and d.reason == "least_load"


def test_the_tables_are_bounded():
    router = Router(RoutingConfig(block_tokens=1, max_entries=3))
    a, _ = _replicas()
    hashes = prefix_hashes(list(range(10)), "", router.cfg)
    router.start(router.choose([a], hashes), hashes, "s", 1, 1)  # type: ignore[arg-type]
    assert len(router._prefixes) == 3 and len(router._sessions) == 1
