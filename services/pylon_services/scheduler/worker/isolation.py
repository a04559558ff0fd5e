"""Who a job's user code runs as, and what it sees of the platform.

The worker (platform code) holds the platform's credentials: the Redis password and object-store
keys in its settings, Ray's token in its environment. User code must get none of them, so a
command runs

- with an environment built from an allowlist (no ``PYLON_*`` setting, no ``RAY_AUTH_*``, no
  cloud keys) plus the job's own variables and the ``pylon.train`` contract; and
- when the worker is root, as an unprivileged user of its own (``job_uid``, one per job), so it
  can read neither the platform's files (the Pylon home is 0700) nor ``/proc`` of the platform's
  processes nor another job's processes or files.

``PYLON_JOB_USER`` chooses: ``auto`` (the default) isolates when it can and says in the job's log
when it cannot (a worker that is not root; a Python install unprivileged users cannot run, such
as one under a 0700 home, where isolating would break every Python job); ``isolated`` always
runs user code as its own user and fails the job when the worker cannot switch users; ``same``
runs it as the worker's user (trusted single-user setups only).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

JOB_USER_MODES = ("auto", "isolated", "same")
JOB_UID_SPAN = 1_000_000  # uids base .. base + span - 1: one per job, by the job's name
PROBE_TIMEOUT_S = 30.0
# What user code may inherit from the worker's environment (everything else is dropped).
_ENV_ALLOW = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "LD_LIBRARY_PATH", "HTTP_PROXY", "HTTPS_PROXY",
                        "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
                        "PIP_FIND_LINKS", "PIP_NO_INDEX", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})
_ENV_ALLOW_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "NCCL_")


class IsolationError(RuntimeError):
    """User code cannot run as required (``PYLON_JOB_USER=isolated`` and no way to isolate it)."""


@dataclass(frozen=True)
class RunAs:
    """The user a job's processes run as: ``uid`` None means the worker's own; ``why`` says why
    user code is not isolated (empty when it is)."""

    uid: int | None
    why: str = ""

    @property
    def isolated(self) -> bool:
        return self.uid is not None


def job_uid(job_key: str, base: int) -> int:
    """The job's own uid, stable across its attempts and workers (they share files)."""
    return base + int(hashlib.sha256(job_key.encode()).hexdigest()[:12], 16) % JOB_UID_SPAN


def decide(mode: str, base: int, job_key: str) -> RunAs:
    """Who runs the job's user code (see the module's doc)."""
    if mode not in JOB_USER_MODES:
        raise IsolationError(f"PYLON_JOB_USER must be one of {', '.join(JOB_USER_MODES)}, not {mode!r}")
    if mode == "same":
        return RunAs(None, "PYLON_JOB_USER=same")
    if os.geteuid() != 0:
        why = f"the worker runs as uid {os.geteuid()}, not root, so it cannot switch users"
        if mode == "isolated":
            raise IsolationError(f"PYLON_JOB_USER=isolated but {why}")
        return RunAs(None, why)
    if mode == "auto" and not python_runs_unprivileged(base):
        return RunAs(None, f"{sys.executable} cannot be run by an unprivileged user (is it under a private "
                           "home directory?); install Pylon where other users can read it, or set "
                           "PYLON_JOB_USER=isolated for jobs that do not need it")
    return RunAs(job_uid(job_key, base))


@functools.cache
def python_runs_unprivileged(uid: int) -> bool:
    """Whether this interpreter starts as ``uid`` (checked once per worker process)."""
    try:
        out = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=demote(uid), capture_output=True,
                             timeout=PROBE_TIMEOUT_S, env={"PATH": os.environ.get("PATH", "")}, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def demote(uid: int | None) -> Callable[[], None]:
    """A ``preexec_fn``: drop to ``uid`` (its own group, no supplementary groups) when given, and
    in every case get SIGKILL when the worker dies, so a killed worker leaves no orphan (the
    death signal is set after the switch: changing credentials clears it)."""
    def run() -> None:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    return run


def give_to(path: str, run_as: RunAs) -> None:
    """Make the job's user own ``path`` and everything under it (no-op when not isolated)."""
    if run_as.uid is None:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, run_as.uid, run_as.uid)
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), run_as.uid, run_as.uid, follow_symlinks=False)


def user_environment(inherited: Mapping[str, str], job_env: Mapping[str, str], contract: Mapping[str, str]
                     ) -> dict[str, str]:
    """The environment of user code: the allowed part of ``inherited``, then the job's own
    variables, then the ``pylon.train`` contract (which the job cannot override)."""
    base = {k: v for k, v in inherited.items() if k in _ENV_ALLOW or k.startswith(_ENV_ALLOW_PREFIXES)}
    return {**base, **job_env, **contract}
