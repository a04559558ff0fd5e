"""`pylon up`, `pylon status`, `pylon down` and `pylon demo` as a user runs them: real processes.
A detached `pylon up` keeps a supervisor running that restarts what dies; the Pylon home is this
user's only; Redis wants its password and Ray its token."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = pytest.mark.e2e
PYLON = [sys.executable, "-m", "pylon.cli"]
SERVICES = ("gateway", "ingest", "registry", "scheduler")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYLON_")}
    env["PYLON_HOME"] = str(home)
    return env


def _alive(pid: int) -> bool:
    """Running; a zombie counts as gone (the detached supervisor's parent becomes PID 1, which
    may reap it late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pylon(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYLON, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _up(home: Path, *flags: str) -> dict[str, Any]:
    up = _pylon(_env(home), "up", "--detach", "--random-ports", *flags)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "PYLON_TOKEN=" in up.stdout
        state: dict[str, Any] = json.loads((home / "state.json").read_text())
        assert state["admin_key"] in up.stdout and _redis_password(home) not in up.stdout
    except BaseException:
        _pylon(_env(home), "down")  # never leave a platform running behind a failed test
        raise
    return state


def _down(home: Path) -> None:
    down = _pylon(_env(home), "down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert not (home / "state.json").exists()


def _status(home: Path) -> dict[str, dict[str, Any]]:
    status = _pylon(_env(home), "status", "--json", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    return {r["service"]: r for r in json.loads(status.stdout)}


def _redis_password(home: Path) -> str:
    return (home / "redis.password").read_text().strip()


def _home(tmp_path: Path) -> Path:
    """A Pylon home that already exists with the rights a default umask gives (0755)."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    return home


def _assert_private(home: Path) -> None:
    """Everything under the home: directories 0700, files 0600, sockets unreachable to others.
    SeaweedFS chmods its volume-info files (``*.vif``) 0644 itself; its 0700 directory keeps them
    private."""
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    loose = []
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            mode = stat.S_IMODE(st.st_mode)
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600 if stat.S_ISREG(st.st_mode) else None
            if name.endswith(".vif") and Path(root) == home / "seaweed":
                continue  # the walk checks that their directory is 0700
            if (want is not None and mode != want) or mode & 0o077:
                loose.append(f"{os.path.join(root, name)} {oct(mode)}")
    assert not loose, loose


def _assert_redis_wants_the_password(state: dict[str, Any], home: Path) -> None:
    url = state["redis_url"]
    assert f":{_redis_password(home)}@" in url
    host, port = url.rsplit("@", 1)[1].split("/")[0].split(":")
    anonymous = redis.Redis(host=host, port=int(port))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    with redis.Redis.from_url(url) as r:
        assert r.ping()


def _assert_ray_wants_the_token(state: dict[str, Any], home: Path) -> None:
    """`ray health-check` with another token is refused by the GCS; with the home's token it passes."""
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "PYLON_"))}
    env["RAY_AUTH_MODE"] = "token"

    def check(**auth: str) -> int:
        cmd = [ray_cli, "health-check", f"--address={state['ray_address']}"]
        return subprocess.run(cmd, env={**env, **auth}, capture_output=True, timeout=120).returncode

    assert check(RAY_AUTH_TOKEN="0" * 64) != 0
    assert check(RAY_AUTH_TOKEN_PATH=str(home / "ray.token")) == 0


@pytest.mark.parametrize("store", ["local", "s3"])
def test_up_status_down(tmp_path, store):
    home = _home(tmp_path)
    flags = ["--s3"] if store == "s3" else []
    state = _up(home, *flags)
    try:
        rows = _status(home)
        assert {s: rows[s]["health"] for s in SERVICES} == dict.fromkeys(SERVICES, "SERVING")
        processes = {*SERVICES, "scheduler-leader", "redis", "ray", *(["seaweed"] if store == "s3" else [])}
        assert {n for n, r in rows.items() if n != "supervisor"} == processes
        assert all(rows[n]["state"] == "running" and rows[n]["restarts"] == 0 for n in processes)
        assert rows["supervisor"]["state"] == "running" and _alive(rows["supervisor"]["pid"])
        again = _pylon(_env(home), "up", "--detach", timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
        import pylon

        with pylon.Client(state["address"], state["admin_key"]) as c:
            c.models.create("private-check")  # something in the object store (objects/ or SeaweedFS)
        _assert_private(home)
        _assert_redis_wants_the_password(state, home)
        _assert_ray_wants_the_token(state, home)
    finally:
        _down(home)
    assert not any(_alive(pid) for pid in [*state["pids"].values(), state["supervisor_pid"]])
    assert ("seaweed" in state["pids"]) == (store == "s3")


def _wait_status(home: Path, check: Any, timeout_s: float = 180) -> dict[str, dict[str, Any]]:
    """Poll `pylon status` until ``check(rows)`` holds (it fails while Redis is down)."""
    deadline, rows = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        status = _pylon(_env(home), "status", "--json", timeout=60)
        if status.returncode == 0:
            rows = {r["service"]: r for r in json.loads(status.stdout)}
            if check(rows):
                return rows
        time.sleep(1)
    raise AssertionError(f"pylon status never showed it: {rows}")


def _came_back(rows: dict[str, dict[str, Any]], name: str, old_pid: int) -> bool:
    row = rows[name]
    return row["restarts"] == 1 and row["state"] == "running" and row["pid"] != old_pid and _alive(row["pid"])


def test_killed_processes_are_restarted_and_a_second_up_keeps_the_secrets(tmp_path):
    home = _home(tmp_path)
    state = _up(home)
    old, pids = state["pids"], set(state["pids"].values())
    try:
        with redis.Redis.from_url(state["redis_url"]) as r:
            r.delete("pylon:sched:cluster")  # the restarted leader publishes it again
            os.kill(old["gateway"], signal.SIGKILL)
            os.kill(old["scheduler-leader"], signal.SIGKILL)
            rows = _wait_status(home, lambda rows: rows["gateway"]["health"] == "SERVING"
                                and _came_back(rows, "gateway", old["gateway"])
                                and _came_back(rows, "scheduler-leader", old["scheduler-leader"]))
            assert all(rows[s]["restarts"] == 0 for s in ("registry", "ingest", "scheduler", "redis", "ray"))
            deadline = time.monotonic() + 60
            while not r.exists("pylon:sched:cluster") and time.monotonic() < deadline:
                time.sleep(0.5)
            assert r.exists("pylon:sched:cluster")
        os.kill(old["redis"], signal.SIGKILL)  # back on its port with its password; services reconnect
        rows = _wait_status(home, lambda rows: _came_back(rows, "redis", old["redis"])
                            and all(rows[s]["health"] == "SERVING" for s in SERVICES))
        now = json.loads((home / "state.json").read_text())
        assert now["redis_url"] == state["redis_url"] and now["processes"]["gateway"]["last_exit"] == -9
        pids |= set(now["pids"].values())
    finally:
        _down(home)
    assert not any(_alive(pid) for pid in pids)
    # A second `pylon up` on the same home: same Redis password, and rights loosened meanwhile
    # are tightened again.
    (home / "admin.key").chmod(0o644)
    (home / "logs").chmod(0o755)
    home.chmod(0o755)
    again = _up(home)
    try:
        assert again["redis_url"].split("@")[0] == state["redis_url"].split("@")[0]
        assert again["admin_key"] == state["admin_key"]
        _assert_private(home)
    finally:
        _down(home)


def test_demo_runs_the_whole_path(tmp_path):
    result = subprocess.run([*PYLON, "demo", "--steps", "40"], env=_env(tmp_path), capture_output=True,
                            text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for expected in ("datasets/stdlib-docs/versions/1", "tokenizations/stdlib-bpe", "succeeded on pool cpu",
                     "models/stdlib-lm/versions/1",
                     "prod -> v1", "replica(s) ready", "first token after", "with the openai client (http://127.0.0.1:8000/v1)",
                     "→", "Timings:"):
        assert expected in out, f"{expected!r} missing from demo output:\n{out}"
    assert not (tmp_path / "state.json").exists()  # the platform the demo started is stopped again
