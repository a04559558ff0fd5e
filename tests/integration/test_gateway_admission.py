"""Admission through a real gateway and a real engine replica on Ray: limits an admin sets
(SetServingLimits; editors refused) are applied by a second gateway replica through the shared
Redis; over a limit, RESOURCE_EXHAUSTED with a retry delay over gRPC and 429 with Retry-After
and OpenAI's body over HTTP; settlement gives back what an abandoned request did not use; the
concurrency cap; and the failure case of the issue, between two tenants on a deployment one
shares with the other (a tenant over its token budget is throttled while the other tenant's time
to first token stays within its bound) and between two keys of one tenant."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pylon
from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2
from pylon_services.gateway.store.quotas import bucket_key
from pylon_services.localstack.procs import free_port
from pylon_services.runtime.settings import Settings
from tests.integration.test_openai_http import raw
from tests.support.hf_models import build_model_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
DEPLOYMENT = "gw-admit"
FULL = f"tenants/acme/deployments/{DEPLOYMENT}"
THROTTLE_REASONS = ("key_tokens_per_min", "tenant_tokens_per_min", "queue_full", "queue_wait")


def _throttled(reason: str, tenant: str = "acme") -> float:
    """pylon_gateway_throttled_requests_total of acme's deployment for ``tenant`` and ``reason``."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("pylon_gateway_throttled_requests_total", {
        "deployment": FULL, "tenant": tenant, "reason": reason})
    return value or 0.0


@pytest.fixture(scope="module")
def gateway(tenant_clients: dict[str, Any], admin_client: Any, platform: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The deployment (acme's, shared with globex), and a second gateway replica (same Redis and
    services) with small dispatch limits whose clients are: light (acme's key), heavy (another
    acme key), globex, admin."""
    acme = tenant_clients["acme"]
    mv = acme.models.register(DEPLOYMENT, str(build_model_dir(tmp_path_factory.mktemp("admit") / "m")))
    acme.deployments.deploy(DEPLOYMENT, f"models:/{DEPLOYMENT}/versions/{mv.version}", timeout=240,
                            shared_with=["globex"])
    settings = Settings(**{**platform.base, "port": free_port(), "gateway_max_inflight_per_replica": 4,
                           "gateway_limits_cache_s": 0.0, "gateway_max_queued_per_client": 16})
    server = platform.lt.run(platform._start("gateway", settings))
    address = f"127.0.0.1:{settings.port}"
    _, heavy_token = admin_client.admin.create_key("acme", "editor", "admission heavy")
    clients = {"light": pylon.Client(address, acme.token), "heavy": pylon.Client(address, heavy_token),
               "globex": pylon.Client(address, tenant_clients["globex"].token),
               "admin": pylon.Client(address, admin_client.token)}
    yield {"server": server, "http": f"http://127.0.0.1:{server.parts.extra['http'].port}/v1", **clients}
    admin_client.admin.set_serving_limits("acme")
    admin_client.admin.set_serving_limits("globex")
    for c in clients.values():
        c.close()
    platform.lt.run(server.stop(grace=1.0))
    acme.deployments.delete(DEPLOYMENT)


@pytest.fixture
def limits(gateway: dict[str, Any], redis_client: Any) -> Iterator[Any]:
    """Sets acme's limits (or, with tenant=, another's; admin, through the second gateway); full
    buckets and default limits before and after."""
    def clear() -> None:
        for tenant in ("acme", "globex"):
            for key in redis_client.scan_iter(f"pylon:quota:{{{tenant}}}:*"):
                redis_client.delete(key)

    clear()
    yield lambda tenant="acme", **kw: gateway["admin"].admin.set_serving_limits(tenant, **kw)
    for tenant in ("acme", "globex"):
        gateway["admin"].admin.set_serving_limits(tenant)
    clear()


def test_only_admins_set_limits_and_every_gateway_applies_them(tenant_clients, admin_client, gateway, limits):
    with pytest.raises(pylon.PermissionDeniedError):
        tenant_clients["acme"].admin.set_serving_limits("acme", requests_per_min=1)
    with pytest.raises(pylon.InvalidArgumentError) as e:
        admin_client.admin.set_serving_limits("acme", priority="urgent", tokens_per_min=-1)
    assert sorted(v.field for v in e.value.violations) == ["limits.priority", "limits.tokens_per_min"]
    got = admin_client.admin.set_serving_limits("acme", requests_per_min=2, priority="high")  # the platform's gateway
    assert (got.requests_per_min, got.priority, got.overridden) == (2, "high", ["priority", "requests_per_min"])
    mine = tenant_clients["acme"].admin.get_serving_limits()  # a tenant reads its own
    assert mine.requests_per_min == 2 and mine.tokens_per_min == 0 and mine.tenant == "acme"
    with pytest.raises(pylon.NotFoundError):
        tenant_clients["globex"].admin.get_serving_limits("acme")
    light = gateway["light"]  # the second gateway reads them from Redis
    light.generate(DEPLOYMENT, "The quick", max_tokens=2)
    light.generate(DEPLOYMENT, "The quick", max_tokens=2)
    with pytest.raises(pylon.ResourceExhaustedError, match="tenant requests/min") as exc:
        light.generate(DEPLOYMENT, "The quick", max_tokens=2)
    assert exc.value.retry_after_s is not None and 20 < exc.value.retry_after_s <= 30.5  # half a request at 2/min
    status, headers, body = raw(gateway["http"], "/completions", {"model": DEPLOYMENT, "prompt": "x", "max_tokens": 2},
                                light.token)
    assert status == 429 and 20 <= int(headers["Retry-After"]) <= 31
    assert body["error"]["type"] == "rate_limit_error" and "requests/min" in body["error"]["message"]


def test_a_request_above_the_whole_budget_is_refused_without_a_delay(gateway, limits):
    limits(key_tokens_per_min=100)
    with pytest.raises(pylon.ResourceExhaustedError, match="above the API key tokens/min limit") as e:
        gateway["light"].generate(DEPLOYMENT, "The quick", max_tokens=200)
    assert e.value.retry_after_s is None


def test_settlement_gives_back_what_an_abandoned_request_did_not_use(gateway, limits, redis_client):
    limits(tokens_per_min=600)
    stream = long_stream(gateway["light"], 500)
    next(stream)  # 513 reserved ("The quick": 9 bytes + 4, and 500), a few used
    key = bucket_key("acme", "tenant", "tpm")
    assert float(redis_client.hget(key, "l")) < 100
    stream.cancel()  # the caller goes away: the relay aborts, the settlement refunds
    wait_for(lambda: float(redis_client.hget(key, "l")) > 500, 10, "the unused tokens to come back")


def test_the_concurrency_cap_counts_requests_across_the_tenant(gateway, limits):
    limits(max_concurrent=1)
    stream = long_stream(gateway["heavy"], 400)
    next(stream)
    with pytest.raises(pylon.ResourceExhaustedError, match="1 requests queued or running") as e:
        gateway["light"].generate(DEPLOYMENT, "The quick", max_tokens=2)
    assert e.value.retry_after_s == 1.0
    stream.cancel()
    wait_for(lambda: _ok(gateway["light"]), 10, "the lease to be given back")


def long_stream(client: Any, max_tokens: int) -> Any:
    """A raw Generate call, to cancel midway."""
    return client.gateway.Generate(gateway_pb2.GenerateRequest(
        deployment=f"tenants/acme/deployments/{DEPLOYMENT}", prompt="The quick",
        sampling=engine_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)), metadata=client.metadata(), timeout=120)


def _ok(client: Any) -> bool:
    try:
        client.generate(DEPLOYMENT, "The quick", max_tokens=2)
        return True
    except pylon.ResourceExhaustedError:
        return False


def ttft(client: Any) -> float:
    start = time.perf_counter()
    for _ in client.generate_stream(DEPLOYMENT, "The quick brown fox", max_tokens=2, temperature=0):
        return time.perf_counter() - start
    raise AssertionError("no piece")


def flood_and_measure(light: Any, heavy: Any, heavy_target: str) -> tuple[float, float, list[Any], list[int]]:
    """The light caller's median TTFT alone, then while 8 streams of 48 tokens from the heavy
    caller flood ``heavy_target`` until it is refused; (alone, loaded, refusals, served)."""
    ttft(light)
    alone = statistics.median(ttft(light) for _ in range(7))
    stop, refused, served = threading.Event(), [], []

    def flood() -> None:
        while not stop.is_set():
            try:
                for _ in heavy.generate_stream(heavy_target, "The quick brown fox", max_tokens=48, ignore_eos=True):
                    pass
                served.append(1)
            except pylon.ResourceExhaustedError as e:
                refused.append(e.retry_after_s)
                time.sleep(0.05)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(served) >= 4, 60, "the heavy caller's first requests")
        loaded = statistics.median(ttft(light) for _ in range(7))
        wait_for(lambda: refused, 60, "the heavy caller to be throttled")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return alone, loaded, refused, served


def test_a_tenant_over_its_budget_is_throttled_while_another_tenants_ttft_stays(gateway, limits):
    """The issue's failure case across tenants: globex floods acme's deployment, shared with it,
    with a 1,500 tokens/min budget of its own (globex pays for its requests, whoever owns the
    deployment): its burst is admitted (up to the 2 of the deployment's 4 slots its key may
    hold, the rest waiting in the fair queue), then it is refused. Acme's median TTFT stays
    within 1.5x its unloaded value plus 100 ms, for the reasons of the two-key test below."""
    limits("globex", tokens_per_min=1500)
    before = {r: _throttled(r, "globex") for r in THROTTLE_REASONS}
    acme_before = sum(_throttled(r) for r in THROTTLE_REASONS)
    alone, loaded, refused, served = flood_and_measure(gateway["light"], gateway["globex"], FULL)
    assert refused and all(r is not None and r > 0 for r in refused)  # throttled, with a retry delay
    counted = {r: _throttled(r, "globex") - before[r] for r in THROTTLE_REASONS}
    assert counted["tenant_tokens_per_min"] >= 1 and sum(counted.values()) >= len(refused), counted
    assert sum(_throttled(r) for r in THROTTLE_REASONS) == acme_before  # the owner was never refused
    print(f"acme TTFT alone {alone * 1000:.1f} ms, under globex's flood {loaded * 1000:.1f} ms; "
          f"globex served {len(served)}, refused {len(refused)}")
    assert loaded <= 1.5 * alone + 0.1


def test_a_key_over_its_budget_is_throttled_while_anothers_ttft_stays(gateway, limits):
    """The heavy key floods with 8 streams of 48 tokens and a 1,500 tokens/min budget per key:
    its burst is admitted (up to the 2 of the deployment's 4 slots one key may hold, 3 being
    the tenant's share, the rest waiting in the fair queue), then it is refused. The light key's
    median TTFT stays within 1.5x its unloaded value plus 100 ms: the light request takes the
    slot the key's share leaves free within the tenant's and is prefilled in the engine's next
    step, beside at most 2 heavy decodes; the 100 ms
    absorbs a few decode steps of that batch on this 2-core machine shared with other work."""
    limits(key_tokens_per_min=1500)
    before = {r: _throttled(r) for r in THROTTLE_REASONS}
    alone, loaded, refused, served = flood_and_measure(gateway["light"], gateway["heavy"], DEPLOYMENT)
    assert refused and all(r is not None and r > 0 for r in refused)  # throttled, with a retry delay
    # Every refusal is counted on the gateway's metrics, by reason (this gateway runs in-process).
    counted = {r: _throttled(r) - before[r] for r in THROTTLE_REASONS}
    assert counted["key_tokens_per_min"] >= 1 and sum(counted.values()) >= len(refused), counted
    print(f"light TTFT alone {alone * 1000:.1f} ms, under the flood {loaded * 1000:.1f} ms; "
          f"heavy served {len(served)}, refused {len(refused)}")
    assert loaded <= 1.5 * alone + 0.1
