"""A local Ray head node (``ray start --head --block``) in its own process group, so stopping
it stops exactly the Ray processes it started and nothing else on the machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from pylon_services.localstack.procs import free_port, stop_process, wait_until

# Keep every Ray address on loopback for a one-machine cluster: without this Ray rewrites
# 127.0.0.1 to the machine's outward-facing IP (ray._private.services.resolve_ip_for_localhost).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DISABLE_USAGE_STATS": "1"}


class RayHead:
    def __init__(self, temp_dir: str, num_cpus: int, num_gpus: int = 0, log_dir: str = "") -> None:
        self.temp_dir = temp_dir  # keep short: Ray puts unix sockets under it
        self.port = free_port()
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.log_path = os.path.join(log_dir or temp_dir, "ray-head.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> RayHead:
        os.makedirs(self.temp_dir, exist_ok=True)
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        args = [ray_cli, "start", "--head", "--block", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}", "--include-dashboard=false",
                "--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **LOCAL_RAY_ENV})

        def gcs_up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(gcs_up, timeout_s, "ray head", self.proc, self.log_path)
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace_s=20)
