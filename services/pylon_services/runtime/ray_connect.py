"""Joining a Ray cluster as a driver, for every service that uses Ray (ingest's runner, the
scheduler's executor).

``ray.init`` gives up after one try: it needs the cluster's GCS and a raylet on this host already
registered with it, and fails with a bare ``ConnectionError`` otherwise. A service started beside
its Ray head (``pylon up`` on a busy machine, a compose or Kubernetes rollout in any order) can
come up first, so the connect is retried with backoff until a deadline, and each failed try is
logged with its cause; the service exits only when the deadline passes
(``PYLON_RAY_CONNECT_TIMEOUT_S``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

log = logging.getLogger("pylon.ray")


def _reason(err: BaseException) -> str:
    """The message of ``err`` and of what it was raised from (Ray wraps the reason)."""
    parts = [f"{type(err).__name__}: {err}"]
    if err.__cause__ is not None:
        parts.append(f"{type(err.__cause__).__name__}: {err.__cause__}")
    return "; caused by ".join(parts)


def _refused(err: BaseException) -> bool:
    """Whether the cluster refused our token (Ray passes the GCS's answer on only as text)."""
    return isinstance(err.__cause__, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in _reason(err)


def connect(address: str, namespace: str, node_ip_address: str = "", timeout_s: float = 180.0) -> None:
    """Join the cluster at ``address`` (start a local one when empty) as a driver in ``namespace``,
    retrying for up to ``timeout_s`` (``PYLON_RAY_CONNECT_TIMEOUT_S``)."""
    extra: dict[str, Any] = {"_node_ip_address": node_ip_address} if node_ip_address else {}
    deadline = time.monotonic() + timeout_s
    delay = 1.0
    attempt = 0
    while True:
        attempt += 1
        try:
            ray.init(address=address or None, namespace=namespace, log_to_driver=False, ignore_reinit_error=True,
                     include_dashboard=False if not address else None, **extra)
            return
        except (ConnectionError, RuntimeError) as err:
            ray.shutdown()  # forget the half-made connection before the next try
            if _refused(err):
                raise  # a wrong or missing token stays wrong: no point waiting
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError(f"could not join the Ray cluster at {address or '(local)'} in "
                                      f"{timeout_s:.0f} s ({attempt} tries): {_reason(err)}") from err
            log.warning("joining the Ray cluster at %s failed (try %d, retrying in %.0f s): %s",
                        address or "(local)", attempt, min(delay, left), _reason(err))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 15.0)
