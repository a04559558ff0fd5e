"""A local Ray head node (``ray start --head --block``) in its own process group, so stopping
it stops exactly the Ray processes it started and nothing else on the machine.

Every port the head listens on is a free one picked once (kept across restarts), so two heads
on one host never collide: Ray's own defaults put every head's client server on 10001 (bound
with SO_REUSEPORT, so a client reaches either cluster), its dashboard agent on 52365 and its
metrics servers on 44217 and 44227 (the second head's fail to bind). With ``auth_token_path`` the head runs with token
authentication: its GCS, raylet and dashboard agent refuse callers without the token, and every
driver must be started with :meth:`RayHead.driver_env`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from pylon_services.localstack.procs import free_ports, stop_process, wait_until

# Keep every Ray address on loopback for a one-machine cluster: without this Ray rewrites
# 127.0.0.1 to the machine's outward-facing IP (ray._private.services.resolve_ip_for_localhost).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DISABLE_USAGE_STATS": "1"}
# Ray's variables that decide authentication; a caller's own values never leak into ours.
RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# `ray start` flags for every port besides the GCS's (Ray 2.60 names), and the variables of the
# two metrics servers no flag sets (the autoscaler's monitor and the dashboard process read them).
PORT_FLAGS = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port",
              "dashboard-port")
PORT_VARS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


class RayHead:
    def __init__(self, temp_dir: str, num_cpus: int, num_gpus: int = 0, log_dir: str = "",
                 auth_token_path: str | None = None, umask: int | None = None) -> None:
        self.temp_dir = temp_dir  # keep short: Ray puts unix sockets under it
        gcs, *others = free_ports(1 + len(PORT_FLAGS) + len(PORT_VARS))
        self.port = gcs
        self.ports = {"gcs": gcs, **dict(zip((*PORT_FLAGS, *PORT_VARS), others, strict=True))}
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.log_path = os.path.join(log_dir or temp_dir, "ray-head.log")
        self.auth_token_path = auth_token_path
        self.umask = umask
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def driver_env(self) -> dict[str, str]:
        """Variables a process joining this head needs (Ray reads RAY_AUTH_MODE once, at import)."""
        env = {**LOCAL_RAY_ENV, "RAY_ADDRESS": self.address}
        if self.auth_token_path:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.auth_token_path)
        return env

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.auth_token_path:
            for name in RAY_AUTH_VARS:  # RAY_AUTH_TOKEN would win over the file
                env.pop(name, None)
        env.update(self.driver_env())
        env.pop("RAY_ADDRESS")
        env.update({name: str(self.ports[name]) for name in PORT_VARS})
        return env

    def start(self, timeout_s: float = 120) -> RayHead:
        os.makedirs(self.temp_dir, mode=0o700, exist_ok=True)
        os.chmod(self.temp_dir, 0o700)  # Ray's sockets, session logs and spilled objects
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        args = [ray_cli, "start", "--head", "--block", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}", "--include-dashboard=false",
                "--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        args += [f"--{flag}={self.ports[flag]}" for flag in PORT_FLAGS]
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self._env(), umask=-1 if self.umask is None else self.umask)

        def gcs_up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(gcs_up, timeout_s, "ray head", self.proc, self.log_path)
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace_s=20)
