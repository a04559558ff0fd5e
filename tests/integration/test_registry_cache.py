"""The registry's read cache (get version, resolve alias) never serves a stale answer past an
invalidation: two real registry replicas share one Redis and one object store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from pylon_services.registry.store.read_cache import CachedIndexReader
from pylon_services.registry.store.redis_index import CHANGED_CHANNEL, AsyncIndexReader, P
from pylon_services.storage.factory import open_store
from tests.support.registry import InProcessRegistry, RegistryEnv, flush_db, registry_settings

pytestmark = pytest.mark.integration
DB = 13  # a keyspace of its own (see tests/support for the others)


@pytest.fixture(scope="module")
def replicas(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryEnv, RegistryEnv]]:
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    flush_db(redis_url)
    store_url = f"file://{tmp_path_factory.mktemp('reg-cache-objects')}"
    settings = registry_settings(redis_url, store_url, None)
    a, b = InProcessRegistry(settings).start(), InProcessRegistry(settings).start()
    store = open_store(store_url)
    yield (RegistryEnv(f"127.0.0.1:{a.port}", settings, store, redis_url),
           RegistryEnv(f"127.0.0.1:{b.port}", settings, store, redis_url))
    a.stop()
    b.stop()


def _model(env: RegistryEnv, name: str, versions: int = 2) -> None:
    env.store.put(f"tenants/acme/src/{name}/w", b"w")
    with env.client() as c:
        for _ in range(versions):
            c.models.register(name, source_uri=f"tenants/acme/src/{name}")
        c.models.set_alias(name, "prod", 1)


def _eventually(fn: Callable[[], Any], want: Any, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while (got := fn()) != want:
        assert time.monotonic() - start < timeout, f"still {got!r} after {timeout}s, want {want!r}"
        time.sleep(0.02)
    return time.monotonic() - start


def _point_alias_behind_the_registrys_back(env: RegistryEnv, model: str, version: int) -> None:
    """Rewrite the alias in Redis without the change message, as a write whose message got lost."""
    r = redis.Redis.from_url(env.redis_url)
    key = P + f"alias:acme/{model}"
    doc = json.loads(r.hget(key, "prod"))  # type: ignore[arg-type]
    r.hset(key, "prod", json.dumps({**doc, "version": version}))


def test_other_replica_sees_an_alias_move_at_once(replicas: tuple[RegistryEnv, RegistryEnv]) -> None:
    a, b = replicas
    _model(a, "moves")
    with a.client() as ca, b.client() as cb:
        assert cb.models.resolve("models:/moves@prod").version == 1
        assert cb.models.resolve("models:/moves@prod").version == 1  # now from B's memory
        ca.models.set_alias("moves", "prod", 2)
        waited = _eventually(lambda: cb.models.resolve("models:/moves@prod").version, 2)
        assert waited < 5.0
        ca.models.archive("moves", 1)
        _eventually(lambda: cb.models.get("moves", 1).state, "archived")


def test_the_cache_is_really_used_and_a_change_message_ends_it(replicas: tuple[RegistryEnv, RegistryEnv]) -> None:
    """Proves the tests above test a cache: a change without its message stays invisible to a
    replica that cached the model, until the message comes."""
    a, b = replicas
    _model(a, "silent")
    with b.client() as cb:
        assert cb.models.resolve("models:/silent@prod").version == 1
        _point_alias_behind_the_registrys_back(a, "silent", 2)
        time.sleep(0.3)
        assert cb.models.resolve("models:/silent@prod").version == 1  # served from memory
        redis.Redis.from_url(a.redis_url).publish(CHANGED_CHANNEL, "acme/silent")
        _eventually(lambda: cb.models.resolve("models:/silent@prod").version, 2)


def test_a_replica_reads_its_own_writes_without_waiting(replicas: tuple[RegistryEnv, RegistryEnv]) -> None:
    a, _ = replicas
    _model(a, "own", versions=3)
    with a.client() as c:
        for i in range(20):
            want = 1 + (i % 3)
            c.models.set_alias("own", "prod", want)
            assert c.models.resolve("models:/own@prod").version == want
            assert "prod" in c.models.get("own", want).aliases


def test_losing_the_change_feed_drops_the_cache(replicas: tuple[RegistryEnv, RegistryEnv]) -> None:
    a, b = replicas
    _model(a, "feed")
    with b.client() as cb:
        assert cb.models.resolve("models:/feed@prod").version == 1
        r = redis.Redis.from_url(a.redis_url)
        r.client_kill_filter(_type="pubsub")  # both replicas lose their subscription
        _point_alias_behind_the_registrys_back(a, "feed", 2)  # and this change's message is never sent
        _eventually(lambda: cb.models.resolve("models:/feed@prod").version, 2)


def test_a_read_that_races_a_write_is_not_cached(redis_server: Any) -> None:
    """The reply of a read that was in flight when its model changed is returned but not kept."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    key = P + "alias:acme/race"

    class Gated(AsyncIndexReader):
        gate: asyncio.Event | None = None

        async def aliases(self, tenant: str, model: str) -> dict[str, dict[str, Any]]:
            out = await super().aliases(tenant, model)
            if self.gate is not None:
                await self.gate.wait()
            return out

    async def scenario() -> tuple[Any, Any, Any]:
        client = aioredis.from_url(url)
        await client.hset(key, "prod", json.dumps({"version": 1}))
        reader = Gated(client)
        cache = CachedIndexReader(reader, client, ttl_s=60)
        await cache.start()
        await _until(lambda: cache._live)
        reader.gate = asyncio.Event()
        pending = asyncio.create_task(cache.alias("acme", "race", "prod"))
        await asyncio.sleep(0.05)  # the read has its reply (version 1) and waits at the gate
        await client.hset(key, "prod", json.dumps({"version": 2}))
        cache.invalidate("acme/race")  # what the writing index does right after its write
        reader.gate.set()
        raced = await pending
        reader.gate = None
        after = await cache.alias("acme", "race", "prod")
        again = await cache.alias("acme", "race", "prod")
        await cache.stop()
        await client.aclose()
        return raced, after, again

    raced, after, again = asyncio.run(scenario())
    assert raced == {"version": 1}  # it was read before the write; returning it is fine
    assert after == {"version": 2} and again == {"version": 2}  # but it was not kept


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_an_index_write_tells_its_own_process_before_it_returns_and_publishes(redis_server: Any) -> None:
    """Read-your-writes in one replica does not wait for the pub/sub message: the writing index
    calls its process's listeners synchronously, after the write is in Redis."""
    from pylon_services.registry.store.redis_index import RedisRegistryIndex

    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{DB}")
    sub = client.pubsub()
    sub.subscribe(CHANGED_CHANNEL)
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    index = RedisRegistryIndex(client)
    seen: list[tuple[str, Any]] = []
    index.listeners.append(lambda tm: seen.append((tm, client.hget(P + "alias:acme/own-process", "prod"))))
    index.put_alias("acme", "own-process", "prod", {"version": 3})
    assert [tm for tm, _ in seen] == ["acme/own-process"] and json.loads(seen[0][1]) == {"version": 3}
    message = sub.get_message(timeout=5)
    assert message is not None and message["data"] == b"acme/own-process"
    sub.close()
