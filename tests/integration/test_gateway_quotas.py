"""Gateway admission against a real Redis: the Lua token buckets (refusal with a retry delay,
settlement's refund, a cost above the whole limit, buckets shared by two gateways), concurrency
leases, the fair queue's bounds and dispatch order through the glue, and a Redis that stops
(fail closed: UNAVAILABLE, and serving again once it is back).

The relay behind admission is a stand-in generator here (our own port: ``Admission.serve`` takes
any relay); tests/integration/test_gateway_admission.py runs the real gateway and replicas."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from pylon.engine.v1 import engine_pb2
from pylon_services.common.errors import ResourceExhausted, Unavailable
from pylon_services.common.names import Principal
from pylon_services.gateway.api.admission import Admission
from pylon_services.gateway.api.inference import Piece
from pylon_services.gateway.domain.deployments import new_record
from pylon_services.gateway.store.quotas import Bucket, QuotaStore, bucket_key, lease_key
from pylon_services.localstack.redis_server import RedisServer
from pylon_services.runtime.context import set_call
from pylon_services.runtime.settings import Settings

pytestmark = pytest.mark.integration
REC = new_record("tenants/acme/deployments/d", "u1", 1)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[QuotaStore]:
    """Quotas on the session's Redis, which the shared platform also uses: only the quota keys are
    cleared (never the whole database: the platform's keys, jobs and streams live there too)."""
    r = aioredis.from_url(redis_server.url)

    async def clear() -> None:
        keys = [k async for k in r.scan_iter("pylon:quota:*")]
        await r.delete("pylon:gateway:limits", *keys)

    await clear()
    yield QuotaStore(r)
    await clear()
    await r.aclose()


def tpm(tenant: str, limit: int, cost: int) -> Bucket:
    return Bucket("tenant tokens/min", bucket_key(tenant, "tenant", "tpm"), limit, cost)


async def test_a_bucket_refuses_beyond_its_limit_with_the_time_to_refill(store: QuotaStore):
    assert (await store.acquire("t", [tpm("t", 600, 400)], 0, "l1", 60)).admitted
    refused = await store.acquire("t", [tpm("t", 600, 400)], 0, "l2", 60)
    # 200 left, 400 needed: 200 more at 10 tokens a second is about 20 s.
    assert not refused.admitted and refused.refused_by == "tenant tokens/min" and 19 < refused.wait_s <= 20.1
    never = await store.acquire("t", [tpm("t", 600, 601)], 0, "l3", 60)
    assert never.never and not never.admitted


async def test_a_request_takes_from_every_bucket_or_from_none(store: QuotaStore):
    rpm = Bucket("API key requests/min", bucket_key("t", "key:k", "rpm"), 1, 1)
    assert (await store.acquire("t", [tpm("t", 1000, 10), rpm], 0, "l1", 60)).admitted
    refused = await store.acquire("t", [tpm("t", 1000, 10), rpm], 0, "l2", 60)
    assert refused.refused_by == "API key requests/min" and 59 < refused.wait_s <= 60.1
    assert 989 < (await store.level(bucket_key("t", "tenant", "tpm")) or 0) <= 990.1  # untouched by the refusal


async def test_settlement_gives_back_the_unused_reservation(store: QuotaStore):
    b = tpm("t", 1000, 900)
    assert (await store.acquire("t", [b], 0, "l1", 60)).admitted
    assert not (await store.acquire("t", [tpm("t", 1000, 500)], 0, "l2", 60)).admitted
    await store.settle("t", [(b, 900 - 120)], "l1")  # it used 120 of its 900
    assert 879 < (await store.level(b.key) or 0) <= 881
    assert (await store.acquire("t", [tpm("t", 1000, 500)], 0, "l3", 60)).admitted


async def test_concurrency_leases_cap_and_expire(store: QuotaStore):
    assert (await store.acquire("t", [], 2, "a", 60)).admitted
    assert (await store.acquire("t", [], 2, "b", 0.3)).admitted
    refused = await store.acquire("t", [], 2, "c", 60)
    assert refused.refused_by == "concurrency" and refused.wait_s > 0
    await store.settle("t", [], "a")
    assert (await store.acquire("t", [], 2, "c", 60)).admitted
    await asyncio.sleep(0.4)  # "b" (its gateway died holding it) expires
    assert (await store.acquire("t", [], 2, "d", 60)).admitted
    assert await store._redis.zcard(lease_key("t")) == 2


async def test_two_gateways_share_the_buckets(redis_server: RedisServer, store: QuotaStore):
    other = aioredis.from_url(redis_server.url)
    try:
        assert (await store.acquire("t", [tpm("t", 100, 60)], 0, "l1", 60)).admitted
        assert not (await QuotaStore(other).acquire("t", [tpm("t", 100, 60)], 0, "l2", 60)).admitted
    finally:
        await other.aclose()


def relay_of(prompt_tokens: int, completion_tokens: int, hold: asyncio.Event | None = None,
             log: list[str] | None = None, name: str = "") -> Any:
    """A stand-in relay: one piece with the usage, after ``hold`` is set."""
    async def relay() -> AsyncGenerator[Piece, None]:
        if log is not None:
            log.append(name)
        if hold is not None:
            await hold.wait()
        usage = engine_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        yield Piece(engine_pb2.GenerateResponse(text="x", usage=usage), "job", REC.name)
    return lambda: relay()


def call(admission: Admission, key: str, request: engine_pb2.GenerateRequest, relay: Any,
         priority: str = "", tenant: str = "acme") -> asyncio.Task[list[Piece]]:
    async def run() -> list[Piece]:
        set_call(Principal(tenant, "editor", key), "r", "")
        return [p async for p in admission.serve(REC, request, priority, relay)]
    return asyncio.ensure_future(run())


def request(prompt_tokens: int = 10, max_tokens: int = 50) -> engine_pb2.GenerateRequest:
    return engine_pb2.GenerateRequest(prompt_token_ids=list(range(prompt_tokens)),
                                      sampling=engine_pb2.SamplingParams(max_tokens=max_tokens))


async def test_serve_reserves_up_front_and_refunds_at_the_end(store: QuotaStore):
    admission = Admission(store, Settings(gateway_tokens_per_min=100, gateway_requests_per_min=10))
    await call(admission, "k1", request(10, 50), relay_of(10, 5))  # reserved 60, used 15
    assert 84 < (await store.level(bucket_key("acme", "tenant", "tpm")) or 0) <= 86
    assert 8.9 < (await store.level(bucket_key("acme", "tenant", "rpm")) or 0) <= 9.1  # a request is not refunded
    await call(admission, "k1", request(10, 50), relay_of(10, 50))
    with pytest.raises(ResourceExhausted) as e:
        await call(admission, "k1", request(10, 50), relay_of(10, 50))
    assert "tenant tokens/min" in e.value.message and e.value.retry_after_s and e.value.retry_after_s > 1


async def test_the_queue_is_bounded_and_serves_the_lighter_client_first(store: QuotaStore):
    s = Settings(gateway_max_inflight_per_replica=1, gateway_max_queued=3, gateway_max_queued_per_client=2)
    admission = Admission(store, s)
    hold, order = asyncio.Event(), []
    running = call(admission, "heavy", request(), relay_of(10, 40, hold, order, "h0"))
    await asyncio.sleep(0.05)
    waiting = [call(admission, "heavy", request(), relay_of(10, 40, hold, order, f"h{i}")) for i in (1, 2)]
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted, match="acme/heavy has 2 requests waiting") as e:
        await call(admission, "heavy", request(), relay_of(10, 40))
    assert e.value.retry_after_s == 1.0
    light = call(admission, "light", request(), relay_of(10, 1, hold, order, "l0"))
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted, match="deployment's queue is full"):
        await call(admission, "other", request(), relay_of(10, 1))
    assert admission.queue_depth(REC.name) == 3
    hold.set()
    await asyncio.gather(running, light, *waiting)
    assert order == ["h0", "l0", "h1", "h2"]  # the light key overtakes the heavy one's backlog


async def test_slot_shares_hold_per_tenant_and_per_key_on_a_shared_deployment(store: QuotaStore):
    """4 slots, a share of 0.5: while globex (another tenant on the same deployment) is active, a
    tenant holds at most 2, a key at most 1 of its tenant's 2. Acme floods from three keys; globex
    comes back and still finds a slot."""
    s = Settings(gateway_max_inflight_per_replica=4, gateway_max_inflight_share=0.5)
    admission = Admission(store, s)
    await call(admission, "g", request(), relay_of(10, 1), tenant="globex")  # globex is active
    hold, order = asyncio.Event(), []
    acme = [call(admission, f"k{i % 3}", request(), relay_of(10, 40, hold, order, f"acme-k{i % 3}"))
            for i in range(6)]
    await asyncio.sleep(0.05)
    # A slot each for two of its keys (which two depends on the order their limit reads return),
    # then acme is at its 2.
    assert len(order) == 2 and len(set(order)) == 2, order
    globex = call(admission, "g", request(), relay_of(10, 1, hold, order, "globex"), tenant="globex")
    await asyncio.sleep(0.05)
    assert order[-1] == "globex" and len(order) == 3 and admission.queue_depth(REC.name) == 4
    hold.set()
    await asyncio.gather(globex, *acme)
    assert len(order) == 7


async def test_a_caller_alone_uses_every_slot_and_is_held_to_its_share_once_another_comes(store: QuotaStore):
    """The shares bind only under contention: acme alone fills all 4 slots; once globex has asked,
    acme's next dispatches stop at its share (2 of 4) while globex's run."""
    s = Settings(gateway_max_inflight_per_replica=4, gateway_max_inflight_share=0.5)
    admission = Admission(store, s)
    hold, order = asyncio.Event(), []
    first = [call(admission, "k", request(), relay_of(10, 40, hold, order, "acme")) for _ in range(6)]
    await asyncio.sleep(0.05)
    assert order == ["acme"] * 4 and admission.queue_depth(REC.name) == 2  # alone: every slot
    globex = [call(admission, "g", request(), relay_of(10, 1, hold, order, "globex"), tenant="globex")
              for _ in range(3)]
    await asyncio.sleep(0.05)
    assert len(order) == 4  # every slot is taken: globex waits for one to free (no preemption)
    hold.set()
    await asyncio.gather(*first, *globex)
    assert order[4] == "globex"  # the freed slot goes to the tenant below its share
    assert len(order) == 9


async def test_the_lighter_tenant_goes_first_however_many_keys_the_other_has(store: QuotaStore):
    admission = Admission(store, Settings(gateway_max_inflight_per_replica=1))
    hold, order = asyncio.Event(), []
    running = call(admission, "k0", request(), relay_of(10, 40, hold, order, "acme"))
    await asyncio.sleep(0.05)
    waiting = [call(admission, f"k{i}", request(), relay_of(10, 40, hold, order, "acme")) for i in range(1, 5)]
    await asyncio.sleep(0.05)
    light = call(admission, "g", request(), relay_of(10, 1, hold, order, "globex"), tenant="globex")
    await asyncio.sleep(0.05)
    hold.set()
    await asyncio.gather(running, light, *waiting)
    assert order[:2] == ["acme", "globex"]  # one share per tenant, not one per key


async def test_a_caller_that_leaves_the_queue_frees_its_place(store: QuotaStore):
    admission = Admission(store, Settings(gateway_max_inflight_per_replica=1, gateway_max_concurrent=5))
    hold = asyncio.Event()
    running = call(admission, "k", request(), relay_of(1, 1, hold))
    await asyncio.sleep(0.05)
    gone = call(admission, "k", request(), relay_of(1, 1, hold))
    await asyncio.sleep(0.05)
    assert admission.queue_depth(REC.name) == 1
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert admission.queue_depth(REC.name) == 0
    hold.set()
    await running
    assert await store._redis.zcard(lease_key("acme")) == 0  # both leases given back


async def test_redis_unreachable_fails_closed_then_recovers(tmp_path: Path):
    server = RedisServer(str(tmp_path / "redis")).start()
    r = aioredis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    admission = Admission(QuotaStore(r), Settings(gateway_tokens_per_min=1000, gateway_limits_cache_s=0))
    try:
        await call(admission, "k", request(), relay_of(1, 1))
        server.stop()
        start = time.monotonic()
        with pytest.raises(Unavailable, match="quota store"):
            await call(admission, "k", request(), relay_of(1, 1))
        assert time.monotonic() - start < 10
        server.start()
        await call(admission, "k", request(), relay_of(1, 1))
    finally:
        await r.aclose()
        server.stop()
