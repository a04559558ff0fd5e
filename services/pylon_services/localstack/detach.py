"""A supervisor that outlives the command that started it (``pylon up --detach``): start it in
its own session, relay its startup lines until ``state.json`` says ready, and stop it (and
whatever a dead one left behind) by pid later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pylon_services.localstack.home import open_private, private_dir, read_state, secure_home
from pylon_services.localstack.supervise import Proc


def spawn_supervisor(home: str, args: Sequence[str]) -> tuple[Proc, str, int]:
    """Start ``python <args>`` in its own session with ``PYLON_HOME=home``, its output in
    ``logs/supervisor.log``; returns the process, the log's path and its size before the start."""
    secure_home(home)
    log_path = os.path.join(private_dir(os.path.join(home, "logs")), "supervisor.log")
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    with open_private(log_path) as log:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, *args], env={**os.environ, "PYLON_HOME": home},
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log_path, offset


def wait_ready(home: str, proc: Proc, log_path: str, offset: int, on_line: Callable[[str], None],
               timeout_s: float = 600) -> dict[str, Any]:
    """Relay the supervisor's log lines until it records the platform ready; raise if it exits
    first (the relayed log says why) or takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        offset = _relay(log_path, offset, on_line)
        state = read_state(home)
        if state and state.get("phase") == "ready" and state.get("supervisor_pid") == proc.pid:
            _relay(log_path, offset, on_line)
            return state
        if proc.poll() is not None:
            _relay(log_path, offset, on_line, partial_line=True)
            if proc.returncode == 0:
                raise RuntimeError("the platform was stopped before it was ready")
            raise RuntimeError(f"pylon up failed: its supervisor exited with code {proc.returncode} (log: {log_path})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the platform was not ready within {timeout_s:.0f}s (log: {log_path})")
        time.sleep(0.2)


def _relay(path: str, offset: int, on_line: Callable[[str], None], partial_line: bool = False) -> int:
    """Pass on the complete lines written after ``offset``; returns the new offset."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = len(data) if partial_line else data.rfind(b"\n") + 1
    for line in data[:end].decode(errors="replace").splitlines():
        on_line(line)
    return offset + end


def terminate_supervisor(pid: int, timeout_s: float) -> bool:
    """SIGTERM the supervisor and wait while it stops its children; SIGKILL it after
    ``timeout_s``. True when it was running."""
    if pid == os.getpid() or not process_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.1)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def stop_leftover(pid: int, grace_s: float) -> bool:
    """Stop the process group of ``pid`` if it still runs and still leads its own session, as
    every process ``pylon up`` starts does (a recycled pid almost never does, so a stale one is
    left alone). True when it was running."""
    try:
        if not (process_alive(pid) and os.getsid(pid) == pid):
            return False
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.1)
    if process_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    if pid <= 0:  # kill(0) and kill(-1) would ask about whole groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # our own child: reap it if it exited
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc here: kill(0) found it
        return True
