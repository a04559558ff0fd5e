"""Ingest killed (SIGKILL) in the middle of processing: after a restart the operation is adopted
and run again to completion, and exactly one version is ever visible; an operation that keeps
dying is marked FAILED with the reason."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis

from pylon_services.localstack.procs import stop_process
from pylon_services.runtime.auth import ApiKeyStore
from tests.conftest import TEST_BUCKET
from tests.integration.test_ingest_uploads import jsonl
from tests.support.ingest_server import IngestUnderTest, ingest_settings, start_subprocess
from tests.support.platform import LoopThread

pytestmark = pytest.mark.integration
LEASE = {"PYLON_INGEST_OP_LEASE_S": "3"}
# the ~ 85 MB file runs as several chunks
CHUNKED = {**LEASE, "PYLON_INGEST_CHUNK_BYTES": str(16 << 20), "PYLON_INGEST_CHUNK_MIN_CPUS": "1"}


@pytest.fixture
def ingest(redis_server, ray_cluster, seaweed, tmp_path):
    it = IngestUnderTest(ingest_settings(redis_server.url, seaweed, ray_cluster.address, TEST_BUCKET, db=9),
                         LoopThread())

    async def keys() -> None:
        r = aioredis.from_url(it.settings.redis_url)
        _, it.tokens["acme"] = await ApiKeyStore(r).create("acme", "editor")
        await r.aclose()

    asyncio.run(keys())
    yield it
    it.lt.close()


def stored_op(ingest, op_id):
    """The operation as Redis holds it (the server is dead)."""
    from pylon_services.ingest.store.redis_state import RedisState

    async def get():
        r = aioredis.from_url(ingest.settings.redis_url)
        try:
            return await RedisState(r).get(op_id)
        finally:
            await r.aclose()

    return asyncio.run(get())


def _wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_mid_processing_resumes_after_restart(ingest, tmp_path, monkeypatch):
    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    path = jsonl(tmp_path / "big.jsonl", 600_000, width=200)  # ~ 75 MB: seconds of processing
    log = str(tmp_path / "ingest.log")
    proc = start_subprocess(ingest, log, **CHUNKED)
    try:
        with ingest.client() as acme:
            op = acme.datasets.upload(path, "survivor", wait=False)
            _wait_for(lambda: acme.datasets.operation(op.name).metadata.get("state") == "running", 60, "running")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    finally:
        stop_process(proc)
    killed = stored_op(ingest, op.name.rsplit("/", 1)[1])
    assert killed.state == "running" and killed.attempts == 1, "processing finished before the kill"
    store = ingest.store()
    assert not store.exists("tenants/acme/datasets/survivor/versions/0000000001.json")
    proc = start_subprocess(ingest, log, **CHUNKED)
    try:
        with ingest.client() as acme:
            done = acme.datasets.wait(op.name, timeout=300)
            assert done.done and not done.failed, done.error_message
            assert done.metadata["resumed"] == 1 and done.metadata["chunks"] >= 4
            v = acme.datasets.get("survivor", "latest")
            assert (v.version, v.record_count) == (1, 600_000)
            assert acme.datasets.get("survivor").latest_version == 1
    finally:
        stop_process(proc)


def test_an_operation_that_keeps_dying_is_failed_with_the_reason(ingest, tmp_path):
    """Three runs died (attempts used up): the next runner marks it FAILED instead of looping."""
    from pylon_services.ingest.domain.operations import MAX_ATTEMPTS, RUNNING, new_operation
    from pylon_services.ingest.store.redis_state import RedisState

    op = new_operation("acme", "process", "tenants/acme/datasets/doomed", {"dataset": "doomed", "files": []})
    op.state, op.attempts = RUNNING, MAX_ATTEMPTS

    async def seed() -> None:
        r = aioredis.from_url(ingest.settings.redis_url)
        await RedisState(r).save(op)
        await r.aclose()

    asyncio.run(seed())
    proc = start_subprocess(ingest, str(tmp_path / "ingest.log"), **LEASE)
    try:
        with ingest.client() as acme:
            done = acme.datasets.wait(f"tenants/acme/operations/{op.id}", timeout=60)
            assert done.failed and done.error_code == 10
            assert f"stopped {MAX_ATTEMPTS} times" in done.error_message
    finally:
        stop_process(proc)
