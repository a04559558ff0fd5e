"""Server bootstrap shared by all four services.

``PylonServer`` wires settings -> Redis -> API keys -> interceptor -> grpc.aio server with health,
reflection, the PlatformService (discovery) and Prometheus metrics, registers the service's
address in Redis, and shuts down gracefully on SIGTERM: NOT_SERVING, drain in-flight calls, exit.

The exit is bounded whatever the process's threads are doing: a servicer's work runs in worker
threads, which Python joins at exit, and one stuck in a slow store call would otherwise keep
the process alive forever after SIGTERM. A watchdog armed at SIGTERM ends the process
(``os._exit``) ``EXIT_MARGIN_S`` after the grace if it has not exited by then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from pylon.common.v1 import common_pb2, common_pb2_grpc
from pylon_services.runtime.auth import ApiKeyStore
from pylon_services.runtime.interceptor import PylonInterceptor
from pylon_services.runtime.jsonlog import setup_logging
from pylon_services.runtime.loop import run as run_loop
from pylon_services.runtime.redis_text import as_text
from pylon_services.runtime.settings import Settings

log = logging.getLogger("pylon.server")
VERSION = "0.1.0"
ENDPOINTS_KEY = "pylon:endpoints"
_REGISTRATION_PERIOD_S = 10.0
EXIT_MARGIN_S = 1.0


@dataclass
class ServiceParts:
    """What a service contributes: servicers to add, and start/stop hooks for its own resources."""

    name: str
    # Each entry: (add_XServicer_to_server function, servicer, full service name).
    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]]
    on_start: Callable[[], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None
    # Drains the service's other listeners (the gateway's HTTP server) alongside the gRPC drain,
    # within the same grace, before on_stop.
    on_drain: Callable[[], Awaitable[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The API key store the interceptor authenticates with; a service that also manages keys
    # (the registry's AdminService) passes its own, so a revocation clears the cache it reads.
    keys: ApiKeyStore | None = None


class PlatformServicer(common_pb2_grpc.PlatformServiceServicer):
    """Discovery: every service's registered address, from Redis; for the answering service
    itself, its own address. With several replicas of a service, the registered address is the
    last one to register, so a client pointed at one replica would otherwise be sent to another
    (and lose it when that one goes away, though the one it asked is up)."""

    def __init__(self, redis: aioredis.Redis, service: str = "", address: Callable[[], str] = lambda: "") -> None:
        self._redis = redis
        self._service = service
        self._address = address

    async def GetPlatform(self, request: common_pb2.GetPlatformRequest,
                          context: grpc.aio.ServicerContext) -> common_pb2.GetPlatformResponse:
        raw = await self._redis.hgetall(ENDPOINTS_KEY)
        now = time.time()
        entries = {as_text(name): json.loads(value) for name, value in raw.items()}
        if self._service and (own := self._address()):
            entries[self._service] = {"address": own, "ts": now}
        services = [common_pb2.ServiceEndpoint(service=name, address=e["address"], last_seen_age_s=max(0.0, now - e["ts"]))
                    for name, e in sorted(entries.items())]
        return common_pb2.GetPlatformResponse(version=VERSION, services=services)


class PylonServer:
    """One running service process."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, parts: ServiceParts) -> None:
        self.settings = settings
        self.redis = redis
        self.parts = parts
        self.keys = parts.keys or ApiKeyStore(redis, settings.admin_key, settings.auth_cache_ttl_s)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self._metrics_httpd: Any = None
        self._register_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.settings.advertise_address or f"{self.settings.host}:{self.port}"

    async def start(self) -> int:
        s = self.settings
        options = [("grpc.max_receive_message_length", s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        self.server = grpc.aio.server(interceptors=[PylonInterceptor(self.keys, s.max_call_s)], options=options)
        names = [health.SERVICE_NAME, reflection.SERVICE_NAME, "pylon.common.v1.PlatformService"]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        common_pb2_grpc.add_PlatformServiceServicer_to_server(
            PlatformServicer(self.redis, self.parts.name, lambda: self.address if self.port else ""), self.server)
        for add, servicer, name in self.parts.servicers:
            add(servicer, self.server)
            names.append(name)
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(f"{s.host}:{s.port}")
        if self.parts.on_start:
            await self.parts.on_start()
        await self.server.start()
        for name in names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port >= 0:
            self._metrics_httpd, _ = start_http_server(s.metrics_port, addr=s.host)
            self.metrics_port = self._metrics_httpd.server_port
        self._register_task = asyncio.create_task(self._register_loop())
        log.info("serving", extra={"service": self.parts.name, "address": self.address,
                                   "metrics_port": self.metrics_port})
        return self.port

    async def _register_loop(self) -> None:
        """Keep this service's address fresh in Redis for discovery."""
        while True:
            try:
                await self.redis.hset(ENDPOINTS_KEY, self.parts.name,
                                      json.dumps({"address": self.address, "ts": time.time()}))
            except Exception:  # noqa: BLE001 - Redis blips must not kill the server
                log.warning("endpoint registration failed", exc_info=True)
            await asyncio.sleep(_REGISTRATION_PERIOD_S)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (load balancers stop sending), then drain in-flight calls, then close."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down", extra={"service": self.parts.name, "grace_s": grace})
        await self.health.enter_graceful_shutdown()
        if self._register_task:
            self._register_task.cancel()
        drains: list[Awaitable[None]] = [self.server.stop(grace)] if self.server else []
        if self.parts.on_drain:
            drains.append(self.parts.on_drain())
        await asyncio.gather(*drains)
        if self.parts.on_stop:
            await self.parts.on_stop()
        if self._metrics_httpd:
            self._metrics_httpd.shutdown()
        log.info("stopped", extra={"service": self.parts.name})


def _exit_now(name: str) -> None:
    """The watchdog's end: log which threads were still busy, flush, leave without joining them."""
    busy = sorted(t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon
                  and t is not threading.main_thread())
    log.warning("exiting with worker threads still busy", extra={"service": name, "threads": busy[:20]})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(0)


def arm_exit_watchdog(name: str, after_s: float) -> threading.Timer:
    """End the process ``after_s`` from now unless it has exited (see the module docstring)."""
    timer = threading.Timer(after_s, _exit_now, args=(name,))
    timer.daemon = True
    timer.name = "pylon-exit-watchdog"
    timer.start()
    return timer


async def serve(settings: Settings, build: Callable[[Settings, aioredis.Redis], Awaitable[ServiceParts]]) -> None:
    """Run a service until SIGTERM/SIGINT, then shut down gracefully."""
    # Reconnect through a Redis restart instead of failing the calls that hit a stale pooled
    # connection (about a second of retries with backoff).
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    redis = aioredis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 8),
                              retry_on_error=[RedisConnectionError])
    parts = await build(settings, redis)
    setup_logging(parts.name, settings.log_level)
    server = PylonServer(settings, redis, parts)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    arm_exit_watchdog(parts.name, settings.shutdown_grace_s + EXIT_MARGIN_S)
    await server.stop()
    await redis.aclose()
    # Calls still running in threads were ended by the drain (their budgets stop their loops);
    # do not wait for them here: the watchdog bounds what is left of the exit.
    executor = getattr(loop, "_default_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
        loop._default_executor = None  # type: ignore[attr-defined]  # asyncio.run would join it


def main(build: Callable[[Settings, aioredis.Redis], Awaitable[ServiceParts]]) -> None:
    """Entry point used by each service's ``__main__``."""
    settings = Settings()
    run_loop(serve(settings, build))
