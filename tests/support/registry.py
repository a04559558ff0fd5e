"""A real registry service (in-process or as a subprocess) on its own Redis database, against
SeaweedFS (S3) or the local-filesystem store, with API keys for the roles the tests need."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from pylon_services.localstack.procs import free_port
from pylon_services.runtime.server import PylonServer
from tests.support.platform import ADMIN_KEY, LoopThread


@dataclass
class RegistryEnv:
    """One registry and everything a test needs to talk to it."""

    address: str
    settings: dict[str, Any]
    store: Any
    redis_url: str
    tokens: dict[str, str] = field(default_factory=dict)  # "acme:editor" -> token

    def client(self, tenant: str = "acme", role: str = "editor") -> Any:
        import pylon

        if role == "admin":
            return pylon.Client(self.address, ADMIN_KEY)
        key = f"{tenant}:{role}"
        if key not in self.tokens:
            with pylon.Client(self.address, ADMIN_KEY) as admin:
                self.tokens[key] = admin.admin.create_key(tenant, role)[1]
        return pylon.Client(self.address, self.tokens[key])

    def env(self, port: int) -> dict[str, str]:
        """Environment for running the registry as a subprocess with the same settings."""
        out = dict(os.environ)
        for k, v in self.settings.items():
            out[f"PYLON_{k.upper()}"] = str(v)
        out["PYLON_PORT"] = str(port)
        return out


def registry_settings(redis_url: str, store_url: str, s3: dict[str, str] | None) -> dict[str, Any]:
    extra = {f"s3_{k}": v for k, v in (s3 or {}).items()}
    return dict(redis_url=redis_url, object_store_url=store_url, admin_key=ADMIN_KEY, metrics_port=-1,
                shutdown_grace_s=1.0, **extra)


class InProcessRegistry:
    def __init__(self, settings: dict[str, Any]) -> None:
        from pylon_services.runtime.settings import Settings

        self.port = free_port()
        self.settings = Settings(**settings, port=self.port, registry_address=f"127.0.0.1:{self.port}")
        self.lt = LoopThread()
        self.server: PylonServer | None = None

    def start(self) -> InProcessRegistry:
        import redis.asyncio as aioredis

        from pylon_services.registry.server import build

        async def go() -> PylonServer:
            r = aioredis.from_url(self.settings.redis_url)
            server = PylonServer(self.settings, r, await build(self.settings, r))
            await server.start()
            return server

        self.server = self.lt.run(go())
        return self

    def stop(self) -> None:
        if self.server:
            self.lt.run(self.server.stop(grace=1.0))
        self.lt.close()


class RegistryProcess:
    """``python -m pylon_services.registry`` as a child process (so a test can SIGKILL it)."""

    def __init__(self, env: RegistryEnv, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = env.env(self.port)
        self.env["PYLON_REGISTRY_ADDRESS"] = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> RegistryProcess:
        from pylon.health import check_health

        self.proc = subprocess.Popen([sys.executable, "-m", "pylon_services.registry"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while check_health(f"127.0.0.1:{self.port}") != "SERVING":
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("registry subprocess did not start")
            time.sleep(0.2)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def flush_db(url: str) -> None:
    redis.Redis.from_url(url).flushdb()
