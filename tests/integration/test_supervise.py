"""The supervisor `pylon up` runs, over real processes and a fake clock: a killed process comes
back after 1 s, then 2, 4, ... up to 30 s while it keeps dying, and after 1 s again once it
stayed up a minute; a failed start is retried; a restarted backend restarts its dependents."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from pylon_services.localstack.supervise import Child, Proc, Supervisor

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sleeper() -> Proc:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def kill(child: Child) -> None:
    assert child.proc is not None
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait()


@pytest.fixture
def sup() -> Iterator[tuple[Supervisor, Clock, list[str]]]:
    clock, events = Clock(), []
    supervisor = Supervisor(on_event=events.append, clock=clock)
    yield supervisor, clock, events
    supervisor.stop_all([])


def test_backoff_doubles_to_30s_and_resets_after_a_minute_up(sup):
    supervisor, clock, events = sup
    child = supervisor.launch(Child("svc", sleeper))
    delays = []
    for _ in range(7):
        first_pid = child.proc.pid
        kill(child)
        assert supervisor.poll() and child.state == "backoff" and child.last_exit == -signal.SIGKILL
        delay = child.next_start - clock.now
        clock.now = child.next_start - 0.5
        assert not supervisor.poll() and child.state == "backoff"  # not before its time
        clock.now = child.next_start
        assert supervisor.poll() and child.state == "running" and child.proc.pid != first_pid
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert child.restarts == 7
    clock.now += 60  # stayed up a minute: the next crash waits 1 s again
    kill(child)
    supervisor.poll()
    assert child.next_start - clock.now == 1
    assert any("svc exited with code -9; restarting in 1s" in e for e in events)


def test_a_failed_start_is_retried_with_the_next_delay(sup):
    supervisor, clock, _ = sup
    attempts = []

    def flaky() -> Proc:
        attempts.append(clock.now)
        if len(attempts) == 2:
            raise RuntimeError("port taken")
        return sleeper()

    child = supervisor.launch(Child("svc", flaky))
    clock.now = 100  # up long enough: the first crash waits 1 s
    kill(child)
    supervisor.poll()
    clock.now += 1
    supervisor.poll()  # the restart fails: another death, 2 s this time (it was never up)
    assert child.state == "backoff" and child.restarts == 0 and child.next_start == clock.now + 2
    clock.now += 2
    supervisor.poll()
    assert child.state == "running" and child.restarts == 1 and attempts == [0, 101, 103]


def test_dependents_restart_with_their_backend_and_stop_all_stops_everything(sup):
    supervisor, clock, _ = sup
    backend = supervisor.launch(Child("ray", sleeper, dependents=("leader",)))
    leader = supervisor.launch(Child("leader", sleeper))
    old_leader = leader.proc.pid
    kill(backend)
    supervisor.poll()
    clock.now += 1
    supervisor.poll()
    assert backend.restarts == 1 and leader.restarts == 1 and leader.proc.pid != old_leader
    assert leader.state == "running" and leader.proc.poll() is None
    procs = [backend.proc, leader.proc]
    supervisor.stop_all(["leader", "ray"])
    assert all(p.poll() is not None for p in procs)
    assert supervisor.snapshot()["leader"] == {"pid": procs[1].pid, "state": "stopped", "restarts": 1,
                                               "last_exit": None}
