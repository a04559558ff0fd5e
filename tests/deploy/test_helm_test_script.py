"""The `helm test` script (deploy/helm/pylon/files/helm_test.py) against the real services on
this machine: it passes on a healthy platform and fails when a service is unreachable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.deploy.chart_support import CHART
from tests.support.platform import InProcessPlatform

SCRIPT = CHART / "files" / "helm_test.py"


def _run(services: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYLON_TEST_SERVICES": ",".join(f"{k}={v}" for k, v in services.items()),
           "PYLON_TEST_TIMEOUT_S": "5"}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_helm_test_script_passes_on_the_real_services_and_fails_on_a_dead_one(platform: InProcessPlatform) -> None:
    ok = _run(platform.addresses)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert sorted(line.split()[0] for line in ok.stdout.splitlines()) == sorted(platform.addresses)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    failed = _run({**platform.addresses, "registry": dead})
    assert failed.returncode == 1
    assert f"registry ({dead}): health check failed: UNAVAILABLE" in failed.stderr
