"""The Pylon home of ``pylon up`` (``$PYLON_HOME``, default ``~/.pylon``): secrets, logs, data
and ``state.json``, readable by this user only (directories 0700, files 0600), because they hold
the admin key, the Redis password, the Ray token and every job's data."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from typing import Any

PRIVATE_UMASK = 0o077  # what every process `pylon up` starts creates its files with


def pylon_home() -> str:
    return os.environ.get("PYLON_HOME") or os.path.join(os.path.expanduser("~"), ".pylon")


def private_dir(path: str) -> str:
    """Create ``path`` (and parents) if missing and make it 0700 even if it existed looser."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def secure_home(home: str) -> str:
    """Make the home 0700 and tighten what an earlier, looser run left directly under it and in
    its ``logs/`` (files 0600, directories 0700). Deeper data is covered by its 0700 parents."""
    private_dir(home)
    for base in (home, os.path.join(home, "logs")):
        if not os.path.isdir(base):
            continue
        for entry in os.scandir(base):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                os.chmod(entry.path, 0o700)
            elif entry.is_file():
                os.chmod(entry.path, 0o600)
    return home


def open_private(path: str, mode: str = "ab") -> Any:
    """Open a file created 0600 (and made 0600 if it existed), e.g. a log a child writes to."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def private_secret(path: str, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """A secret kept in a 0600 file: read it, or create it once with ``make()``."""
    if not os.path.exists(path):
        private_dir(os.path.dirname(path))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(make())
    os.chmod(path, 0o600)
    with open(path) as f:
        return f.read().strip()


def admin_key(home: str) -> str:
    """The bootstrap admin key, generated once per home."""
    return private_secret(os.path.join(home, "admin.key"), lambda: f"pyl_admin_{secrets.token_urlsafe(24)}")


def redis_password(home: str) -> str:
    """The embedded Redis's password, generated once per home so a restarted ``pylon up`` on
    the same data keeps it (URL-safe: it goes into ``PYLON_REDIS_URL``)."""
    return private_secret(os.path.join(home, "redis.password"), lambda: secrets.token_hex(24))


def ray_token_path(home: str) -> str:
    """The file holding the Ray cluster's auth token (``RAY_AUTH_TOKEN_PATH``), created once."""
    path = os.path.join(home, "ray.token")
    private_secret(path, lambda: secrets.token_hex(32))
    return path


def state_path(home: str) -> str:
    return os.path.join(home, "state.json")


def write_state(home: str, state: dict[str, Any]) -> None:
    """Replace ``state.json`` atomically (readers never see half a file), 0600."""
    tmp = state_path(home) + ".tmp"
    with open_private(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, state_path(home))


def read_state(home: str | None = None) -> dict[str, Any] | None:
    try:
        with open(state_path(home or pylon_home())) as f:
            state: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return None
    return state


def remove_state(home: str) -> None:
    try:
        os.unlink(state_path(home))
    except FileNotFoundError:
        pass
