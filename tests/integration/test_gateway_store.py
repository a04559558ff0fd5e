"""The gateway's deployment records in a real Redis: every write is a compare-and-swap, so
concurrent changes to one deployment never lose an update."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from pylon_services.common.errors import Aborted, NotFound
from pylon_services.gateway.domain import deployments as records
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.store.deployments import DeploymentStore

pytestmark = pytest.mark.integration


def _run(redis_server: Any, body: Any) -> Any:
    async def main() -> Any:
        clients = [aioredis.from_url(redis_server.url) for _ in range(4)]
        try:
            return await body([DeploymentStore(c) for c in clients])
        finally:
            for c in clients:
                await c.aclose()
    return asyncio.run(main())


def test_concurrent_updates_are_all_kept(redis_server):
    async def body(stores: list[DeploymentStore]) -> DeploymentRecord:
        rec = records.new_record("tenants/t/deployments/race", "u", 1)
        assert await stores[0].create(rec)
        assert not await stores[1].create(rec)  # create-only

        def bump(r: DeploymentRecord) -> DeploymentRecord:  # one more slot per write (no range check here)
            return records.resize(r, r.replicas + 1)

        async def writer(store: DeploymentStore) -> None:
            for _ in range(10):
                await store.update("t", "race", bump)

        # 40 read-modify-writes, 4 writers at a time: without CAS most would be lost
        await asyncio.gather(*(writer(s) for s in stores))
        return await stores[0].get("t", "race")

    rec = _run(redis_server, body)
    assert (rec.replicas, rec.next_index, rec.version) == (41, 41, 41)
    assert [s.index for s in rec.slots] == list(range(41))


def test_a_stale_version_is_refused_and_old_records_read_as_version_zero(redis_server):
    async def body(stores: list[DeploymentStore]) -> None:
        s = stores[0]
        await s.create(records.new_record("tenants/t/deployments/cas", "u", 1))
        current = await s.get("t", "cas")
        assert await s.replace("t", "cas", current, current.version)
        assert not await s.replace("t", "cas", current, current.version)  # someone wrote since
        with pytest.raises(NotFound):
            await s.replace("t", "gone", current, 1)
        # a record written before the version counter existed
        await s.r.set(s._key("t", "old"), json.dumps({"name": "tenants/t/deployments/old", "uid": "o",
                                                      "replicas": 1, "jobs": ["tenants/t/jobs/j0"]}))
        old = await s.get("t", "old")
        assert old.version == 0 and old.slots == (records.Slot(0, "tenants/t/jobs/j0"),)
        assert await s.replace("t", "old", records.resize(old, 2), 0)
        assert (await s.get("t", "old")).version == 1

        same = await s.update("t", "old", lambda r: records.resize(r, 2))  # no change: no write
        assert same.version == 1

        def refuse(r: DeploymentRecord) -> DeploymentRecord:
            raise Aborted("no")
        with pytest.raises(Aborted):
            await s.update("t", "old", refuse)

    _run(redis_server, body)


def test_the_shared_index_follows_creates_updates_and_deletes(redis_server):
    from pylon_services.gateway.domain.sharing import share
    from pylon_services.gateway.store.deployments import SHARED_ALL_KEY, shared_key

    async def body(stores: list[DeploymentStore]) -> None:
        s = stores[0]
        await s.r.delete(shared_key("idx-b"), shared_key("idx-c"), SHARED_ALL_KEY)
        rec = records.new_record("tenants/idx-a/deployments/m", "u", 1, shared_with=("idx-b",))
        assert await s.create(rec) and not await s.create(records.new_record("tenants/idx-a/deployments/m", "v", 1))
        assert [r.name for r in await s.shared_with_tenant("idx-b")] == [rec.name]
        assert await s.shared_with_tenant("idx-c") == []
        current = await s.get("idx-a", "m")
        # a stale compare-and-swap changes neither the record nor the index
        assert not await s.replace("idx-a", "m", share(current, ("idx-c",)), current.version - 1)
        assert await s.shared_with_tenant("idx-c") == []
        await s.update("idx-a", "m", lambda r: share(r, ("idx-c",)))
        assert await s.shared_with_tenant("idx-b") == [] and len(await s.shared_with_tenant("idx-c")) == 1
        assert await s.r.smembers(shared_key("idx-b")) == set()  # removed, not only filtered out
        await s.update("idx-a", "m", lambda r: share(r, ("*",)))
        assert [r.name for r in await s.shared_with_tenant("idx-z")] == [rec.name]
        assert await s.shared_with_tenant("idx-a") == []  # the owner's own are not "shared with" it
        await s.delete("idx-a", "m")
        await s.delete("idx-a", "m")  # repeated: nothing left to remove, nothing broken
        assert await s.shared_with_tenant("idx-z") == [] and not await s.r.exists(SHARED_ALL_KEY, shared_key("idx-c"))

    _run(redis_server, body)


def test_the_controller_lease_is_held_by_one_gateway_and_released_only_by_its_holder(redis_server):
    from pylon_services.gateway.store.serving import LEASE_KEY, ServingCounters

    async def main() -> None:
        r = aioredis.from_url(redis_server.url)
        try:
            await r.delete(LEASE_KEY)
            a, b = ServingCounters(r, "gw-a"), ServingCounters(r, "gw-b")
            assert await a.hold_lease("gw-a", 5.0) and await a.hold_lease("gw-a", 5.0)  # taken, then renewed
            assert not await b.hold_lease("gw-b", 5.0)
            await b.release_lease("gw-b")  # not its lease: left alone
            assert not await b.hold_lease("gw-b", 5.0)
            await a.release_lease("gw-a")
            assert await b.hold_lease("gw-b", 5.0)
            await a.release_lease("gw-a")  # a late release after another took it frees nothing
            assert await r.get(LEASE_KEY) == b"gw-b"
        finally:
            await r.delete(LEASE_KEY)
            await r.aclose()

    asyncio.run(main())
