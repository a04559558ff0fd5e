"""The scheduler's API and leader as real subprocesses with a Redis of their own, for tests that
kill, restart or configure them apart from the session platform."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from pylon_services.localstack.procs import free_port
from pylon_services.localstack.redis_server import RedisServer
from tests.support.platform import ADMIN_KEY

INSTANCE = "pylondur"


class SchedulerProc:
    """The scheduler's API (``python -m pylon_services.scheduler``) and leader
    (``python -m pylon_services.scheduler.leader``) with their own Redis; restartable."""

    def __init__(self, tmp: str, ray_address: str, **env: str) -> None:
        self.tmp = tmp
        self.redis = RedisServer(os.path.join(tmp, "redis")).start()
        self.port = free_port()
        self.env = {**os.environ, "PYLON_REDIS_URL": self.redis.url, "PYLON_RAY_ADDRESS": ray_address,
                    "PYLON_RAY_NODE_IP_ADDRESS": "127.0.0.1", "PYLON_PORT": str(self.port),
                    "PYLON_METRICS_PORT": "-1", "PYLON_ADMIN_KEY": ADMIN_KEY,
                    "PYLON_OBJECT_STORE_URL": f"file://{tmp}/objects", "PYLON_SCHED_INSTANCE": INSTANCE,
                    "PYLON_SCHED_LEASE_S": "3", "PYLON_SHUTDOWN_GRACE_S": "1", **env}
        self.api: subprocess.Popen[bytes] | None = None
        self.leader: subprocess.Popen[bytes] | None = None
        self.others: list[subprocess.Popen[bytes]] = []
        self.runs = 0

    def _spawn(self, module: str, port: int) -> subprocess.Popen[bytes]:
        self.runs += 1
        log = open(os.path.join(self.tmp, f"{module.rsplit('.', 1)[1]}-{self.runs}.log"), "wb")
        return subprocess.Popen([sys.executable, "-m", module], env={**self.env, "PYLON_PORT": str(port)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        """The API on the shared port and one leader."""
        self.api = self._spawn("pylon_services.scheduler", self.port)
        self.leader = self.start_leader()

    def start_leader(self) -> subprocess.Popen[bytes]:
        return self._spawn("pylon_services.scheduler.leader", 0)

    def start_api(self, port: int) -> subprocess.Popen[bytes]:
        """Another API replica on ``port``."""
        proc = self._spawn("pylon_services.scheduler", port)
        self.others.append(proc)
        return proc

    def client(self, port: int | None = None) -> Any:
        import pylon

        c = pylon.Client(f"127.0.0.1:{port or self.port}", ADMIN_KEY)
        deadline = time.time() + 60
        while True:
            try:
                c.jobs.cluster()  # answers once a leader published the cluster
                return c
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the API and the leader."""
        for proc in (self.api, self.leader):
            assert proc is not None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for proc in [self.api, self.leader, *self.others]:
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.redis.stop()
