"""The time a call may still take, seen from any code working for it, including worker threads.

Why: a servicer runs synchronous work (object-store reads, index scans) in threads, and a
thread cannot be cancelled. When the caller's deadline passes or it goes away, grpc cancels the
handler's task but the thread runs on, holding a worker and the store. The interceptor starts a
``CallBudget`` per call (``begin``); ``asyncio.to_thread`` copies the context into the thread,
so the same budget object is visible there, and every loop a request drives calls ``check()``
between steps: past the deadline, or once the call has ended, it raises ``DeadlineExceeded``
and the thread is free again. Code outside a call (start-up, sweeps) has no budget: ``check``
does nothing there; a background task a call starts calls ``detach()`` first.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

from pylon_services.common.errors import DeadlineExceeded


@dataclass
class CallBudget:
    """When a call must stop (monotonic seconds; None: no deadline) and whether it has ended."""

    deadline: float | None
    ended: bool = False

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def end(self) -> None:
        """The call is over (answered, failed or cancelled): work still running for it stops."""
        self.ended = True


_current: contextvars.ContextVar[CallBudget | None] = contextvars.ContextVar("pylon_call_budget", default=None)


def begin(timeout_s: float | None) -> CallBudget:
    """Start the budget of the current call: ``timeout_s`` from now (None: no deadline)."""
    budget = CallBudget(None if timeout_s is None else time.monotonic() + max(0.0, timeout_s))
    _current.set(budget)
    return budget


def detach() -> None:
    """Run the rest of the current task without a call's budget: for work a call starts that
    must outlive it (an operation a commit hands to the runner). Tasks copy their creator's
    context, budget included, so such a task calls this first; it changes only its own copy."""
    _current.set(None)


def current() -> CallBudget | None:
    return _current.get()


def remaining(default: float | None = None) -> float | None:
    """Seconds the current call has left (``default`` outside a call or without a deadline)."""
    budget = _current.get()
    left = budget.remaining() if budget else None
    return default if left is None else max(0.0, left)


def check(what: str = "this call") -> None:
    """Raise ``DeadlineExceeded`` when the current call's deadline passed or the call ended."""
    budget = _current.get()
    if budget is None:
        return
    if budget.ended:
        raise DeadlineExceeded(f"{what} stopped: the call ended")
    if budget.deadline is not None and time.monotonic() >= budget.deadline:
        raise DeadlineExceeded(f"{what} stopped: the call's deadline passed")
