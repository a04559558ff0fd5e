"""Run the four real services in-process (each a real grpc.aio server on a free port) on a
background event loop, and the scheduler's leader as its own process (as in production),
against a real Redis, a real object store and a real Ray cluster."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from pylon_services.runtime.server import PylonServer, ServiceParts
from pylon_services.runtime.settings import Settings

SERVICES = ("registry", "ingest", "scheduler", "gateway")
ADMIN_KEY = "pyl_admin_test-bootstrap-key"


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _builder(name: str) -> Callable[[Settings, aioredis.Redis], Awaitable[ServiceParts]]:
    module = __import__(f"pylon_services.{name}.server", fromlist=["build"])
    return module.build  # type: ignore[no-any-return]


class InProcessPlatform:
    """All four services; ``addresses[svc]`` is where each listens."""

    def __init__(self, redis_url: str, object_store_url: str, ray_address: str, **extra: Any) -> None:
        from pylon_services.localstack.procs import free_port

        self.ports = {svc: free_port() for svc in SERVICES}
        self.addresses = {svc: f"127.0.0.1:{p}" for svc, p in self.ports.items()}
        self.base = dict(redis_url=redis_url, object_store_url=object_store_url, ray_address=ray_address,
                         ray_node_ip_address="127.0.0.1",
                         admin_key=ADMIN_KEY, metrics_port=0, shutdown_grace_s=2.0,
                         **{f"{s}_address": a for s, a in self.addresses.items()}, **extra)
        self.lt = LoopThread()
        self.servers: dict[str, PylonServer] = {}
        self.leader: subprocess.Popen[bytes] | None = None

    def start(self) -> InProcessPlatform:
        self.leader = start_leader(self.base)
        for svc in SERVICES:
            settings = Settings(**self.base, port=self.ports[svc])
            self.servers[svc] = self.lt.run(self._start(svc, settings))
        wait_for_cluster_view(self.base["redis_url"], self.leader)
        return self

    async def _start(self, svc: str, settings: Settings) -> PylonServer:
        redis = aioredis.from_url(settings.redis_url)
        server = PylonServer(settings, redis, await _builder(svc)(settings, redis))
        await server.start()
        return server

    def stop(self) -> None:
        for svc in reversed(SERVICES):
            if svc in self.servers:
                self.lt.run(self.servers[svc].stop(grace=1.0))
        self.lt.close()
        if self.leader is not None:
            self.leader.terminate()
            self.leader.wait(30)


def settings_env(values: dict[str, Any]) -> dict[str, str]:
    """``Settings`` keyword values as the ``PYLON_*`` variables a service process reads."""
    return {f"PYLON_{k.upper()}": str(v) for k, v in values.items()}


def start_leader(values: dict[str, Any], **env: str) -> subprocess.Popen[bytes]:
    """``python -m pylon_services.scheduler.leader`` with these settings (and extra variables)."""
    full = {**os.environ, **settings_env(values), "PYLON_METRICS_PORT": "-1", **env}
    return subprocess.Popen([sys.executable, "-m", "pylon_services.scheduler.leader"], env=full)


def wait_for_cluster_view(redis_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until the leader has published the cluster (the API validates submits against it)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while not r.exists("pylon:sched:cluster"):
            if proc.poll() is not None:
                raise RuntimeError(f"the scheduler leader exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("the scheduler leader did not publish the cluster")
            time.sleep(0.1)
    finally:
        r.close()
