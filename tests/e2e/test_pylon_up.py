"""`pylon up`, `pylon status`, `pylon down` and `pylon demo` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e
PYLON = [sys.executable, "-m", "pylon.cli"]


def _env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYLON_")}
    env["PYLON_HOME"] = str(home)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("store", ["local", "s3"])
def test_up_status_down(tmp_path, store):
    env = _env(tmp_path)
    flags = ["--s3"] if store == "s3" else []
    up = subprocess.run([*PYLON, "up", "--detach", "--random-ports", *flags], env=env, capture_output=True,
                        text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    try:
        assert "PYLON_TOKEN=" in up.stdout and state["admin_key"] in up.stdout
        status = subprocess.run([*PYLON, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = json.loads(status.stdout)
        assert {r["service"]: r["health"] for r in rows} == dict.fromkeys(
            ("gateway", "ingest", "registry", "scheduler"), "SERVING")
        again = subprocess.run([*PYLON, "up", "--detach"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = subprocess.run([*PYLON, "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not any(_alive(pid) for pid in state["pids"].values())
    assert ("seaweed" in state["pids"]) == (store == "s3")
    assert not (tmp_path / "state.json").exists()


def test_demo_runs_the_whole_path(tmp_path):
    result = subprocess.run([*PYLON, "demo", "--steps", "40"], env=_env(tmp_path), capture_output=True,
                            text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for expected in ("datasets/stdlib-docs/versions/1", "succeeded on pool cpu", "models/tiny-gpt/versions/1",
                     "prod -> v1", "replica(s) ready", "first token after", "→", "Timings:"):
        assert expected in out, f"{expected!r} missing from demo output:\n{out}"
    assert not (tmp_path / "state.json").exists()  # the platform the demo started is stopped again
