"""A replica's bounded queue, for any engine (torch-free: the API checks the settings).

``max_queued_requests`` and ``max_queued_tokens`` (vLLM's ``--max-num-queued-reqs`` /
``--max-num-queued-tokens``) bound the requests, and their prompt tokens, that a replica has
admitted but not yet given a first token; beyond them it answers RESOURCE_EXHAUSTED with a retry
delay instead of growing a backlog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QUEUE_SETTINGS = ("max_queued_requests", "max_queued_tokens")


@dataclass(frozen=True)
class QueueLimits:
    max_queued_requests: int = 256
    max_queued_tokens: int = 262_144
    retry_after_s: float = 1.0

    @classmethod
    def pop_from(cls, config: dict[str, Any]) -> QueueLimits:
        """The queue settings of a checked ``engine_config``, removed from it (engines never see them)."""
        return cls(**{k: int(config.pop(k)) for k in QUEUE_SETTINGS if k in config})


def queue_violations(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, rule) for each bad queue setting."""
    return [(k, "must be a positive integer") for k in QUEUE_SETTINGS
            if k in config and (isinstance(config[k], bool) or not isinstance(config[k], int) or config[k] < 1)]
