"""Keep the processes ``pylon up`` started running: one that dies is restarted after a delay that
starts at 1 s and doubles up to 30 s, and falls back to 1 s once a process has stayed up a
minute, so a crash loop neither spins nor leaves a service down for long after one crash."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pylon_services.localstack.procs import stop_process

Proc = subprocess.Popen[bytes]


@dataclass
class Child:
    """One supervised process. ``start`` launches it and returns its process (the leader of its
    own process group); ``stop`` ends it (default: SIGTERM the group, SIGKILL after the grace).
    ``dependents`` are restarted after this one comes back (drivers of a restarted Ray head)."""

    name: str
    start: Callable[[], Proc]
    stop: Callable[[Proc | None], None] = field(default=lambda proc: stop_process(proc, grace_s=30))
    dependents: tuple[str, ...] = ()
    proc: Proc | None = None
    state: str = "stopped"  # running | backoff | stopped
    restarts: int = 0
    last_exit: int | None = None
    backoff_s: float = 0.0
    started_at: float = 0.0
    next_start: float = 0.0


class Supervisor:
    """Polls its children and restarts the dead ones with exponential backoff."""

    def __init__(self, on_event: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                 min_backoff_s: float = 1.0, max_backoff_s: float = 30.0, reset_after_s: float = 60.0) -> None:
        self.children: dict[str, Child] = {}
        self.on_event = on_event
        self.clock = clock
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.reset_after_s = reset_after_s

    def launch(self, child: Child) -> Child:
        """Start ``child`` for the first time and supervise it from now on."""
        self.children[child.name] = child
        child.backoff_s = self.min_backoff_s
        try:
            self._start(child)
        except BaseException:
            child.stop(None)  # a backend that started but never became ready
            raise
        return child

    def _start(self, child: Child) -> None:
        child.proc = child.start()
        child.state = "running"
        child.started_at = self.clock()

    def poll(self) -> bool:
        """One round: note deaths, restart what is due. True when anything changed."""
        changed = False
        for child in list(self.children.values()):
            if child.state == "running" and child.proc is not None and child.proc.poll() is not None:
                self._died(child, child.proc.returncode)
                changed = True
            elif child.state == "backoff" and self.clock() >= child.next_start:
                self._restart(child)
                changed = True
        return changed

    def _died(self, child: Child, code: int | None) -> None:
        now = self.clock()
        if child.proc is not None:
            kill_group(child.proc.pid)  # what the process left behind (Ray's raylet, a worker)
        if now - child.started_at >= self.reset_after_s:
            child.backoff_s = self.min_backoff_s
        child.last_exit = code
        child.state = "backoff"
        child.next_start = now + child.backoff_s
        self.on_event(f"{child.name} exited with code {code}; restarting in {child.backoff_s:g}s")
        child.backoff_s = min(child.backoff_s * 2, self.max_backoff_s)

    def _restart(self, child: Child) -> None:
        try:
            child.stop(child.proc)
            self._start(child)
        except Exception as e:  # noqa: BLE001 - a failed start is one more death, retried later
            self.on_event(f"{child.name} failed to restart: {e}")
            child.stop(None)  # a backend that started but never became ready
            child.started_at = self.clock()  # it was not up at all: no reset of the backoff
            self._died(child, None)
            return
        child.restarts += 1
        self.on_event(f"{child.name} restarted (pid {child.proc.pid if child.proc else '?'}, "
                      f"{child.restarts} restart(s))")
        for name in child.dependents:
            dependent = self.children.get(name)
            if dependent is not None and dependent.state == "running":
                self.on_event(f"restarting {name}, which depends on {child.name}")
                self._restart(dependent)

    def run(self, stop: threading.Event, on_change: Callable[[], None], period_s: float = 0.5) -> None:
        """Supervise until ``stop`` is set; ``on_change`` runs after every round that changed
        something (it records the new pids and counts)."""
        while not stop.is_set():
            if self.poll():
                on_change()
            stop.wait(period_s)

    def stop_all(self, order: Iterable[str]) -> None:
        """Stop the named children in this order (unnamed ones last); none is restarted after."""
        names = list(order)
        names += [n for n in self.children if n not in names]
        for name in names:
            child = self.children.get(name)
            if child is None:
                continue
            if child.state != "stopped":
                child.stop(child.proc)  # a no-op for one that is already dead
                child.state = "stopped"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per child: pid, state, restarts and the last exit code (what ``pylon status`` shows)."""
        return {c.name: {"pid": c.proc.pid if c.proc else None, "state": c.state, "restarts": c.restarts,
                         "last_exit": c.last_exit} for c in self.children.values()}


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group whose leader is gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
