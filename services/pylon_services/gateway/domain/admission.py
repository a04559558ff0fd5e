"""Admission, pure: a tenant's serving limits, a request's priority and token reservation, and
the fair queue in front of a deployment (the virtual token counter of "Fairness in Serving Large
Language Models", OSDI 2024).

The token buckets themselves run in Redis (``store/quotas.py``) so every gateway replica shares
them; the fair queue is per gateway process, in memory, because it orders requests waiting in
this process for one of its dispatch slots.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, TypeVar

from pylon_services.common.errors import FieldViolation, InvalidArgument

PRIORITIES = ("low", "normal", "high")
# The most any limit may be set to (per minute, or concurrent requests): beyond Lua's exact floats.
MAX_LIMIT = 1 << 40
# Tokens a text prompt may take, from its UTF-8 length: byte-level BPE and byte-fallback
# tokenizers never make more tokens than bytes; the margin covers the special tokens added.
SPECIAL_TOKENS_MARGIN = 4

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """A tenant's serving limits; 0 means unlimited. ``key_*`` apply to each of its API keys.
    ``priority`` is the highest a request may ask for and the default of those that do not ask;
    ``weight`` scales the tenant's share in the fair queue (2.0: twice the tokens of a 1.0)."""

    requests_per_min: int = 0
    tokens_per_min: int = 0
    key_requests_per_min: int = 0
    key_tokens_per_min: int = 0
    max_concurrent: int = 0
    priority: str = "normal"
    weight: float = 1.0

    def merged(self, overrides: Mapping[str, Any]) -> Limits:
        """These limits with ``overrides`` (a stored tenant's fields) in their place."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def limit_violations(values: Mapping[str, Any]) -> list[FieldViolation]:
    """What is wrong with a SetServingLimits' values (``limits.<field>``)."""
    bad: list[FieldViolation] = []
    for name in ("requests_per_min", "tokens_per_min", "key_requests_per_min", "key_tokens_per_min", "max_concurrent"):
        v = values.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_LIMIT:
            bad.append(FieldViolation(f"limits.{name}", f"must be an integer from 0 (unlimited) to {MAX_LIMIT}"))
    if values.get("priority", "normal") not in PRIORITIES:
        bad.append(FieldViolation("limits.priority", f"must be one of {', '.join(PRIORITIES)}"))
    w = values.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0.01 <= w <= 100:
        bad.append(FieldViolation("limits.weight", "must be from 0.01 to 100"))
    return bad


def request_priority(asked: str, limits: Limits, field_name: str = "x-pylon-priority") -> int:
    """The priority a request runs at (an index into ``PRIORITIES``): what it asked for (empty:
    the tenant's), never above the tenant's ``priority``, so a tenant cannot jump others by asking."""
    cap = PRIORITIES.index(limits.priority)
    if not asked:
        return cap
    value = asked.strip().lower()
    if value not in PRIORITIES:
        raise InvalidArgument.field(field_name, f"must be one of {', '.join(PRIORITIES)}")
    return min(PRIORITIES.index(value), cap)


def reserved_tokens(prompt_tokens: int, max_tokens: int, n: int) -> int:
    """What a request takes from tokens/min up front: its prompt and every completion at full length."""
    return prompt_tokens + max_tokens * max(1, n)


def text_prompt_tokens(prompt: str) -> int:
    """An upper bound on a text prompt's tokens without its tokenizer (the engine tokenizes)."""
    return len(prompt.encode("utf-8")) + SPECIAL_TOKENS_MARGIN


class QueueFull(Exception):
    """The deployment's queue, or the client's share of it, is at its bound."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(eq=False)  # compared by identity: two requests are never the same entry
class _Entry(Generic[T]):
    client: str
    priority: int
    seq: int
    item: T
    cost: float  # counter units charged at dispatch (weighted, estimated input tokens)


@dataclass
class FairQueue(Generic[T]):
    """Requests waiting for a deployment, ordered by priority and then, among clients with a
    backlog, by the smallest virtual token counter (fair=True) or by arrival (fair=False, FIFO).
    A client is whoever the caller is counted as (the gateway uses the API key, so tenants and
    the applications of one tenant are served fairly alike).

    A client's counter grows by its served tokens over its weight; a client that joins the
    backlog has its counter lifted to the smallest counter of those already backlogged (or,
    none being, to that of the last client served), so idle time is not banked as credit.
    """

    max_queued: int
    max_per_client: int
    fair: bool = True
    counters: dict[str, float] = field(default_factory=dict)
    _waiting: dict[str, deque[_Entry[T]]] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _last_served: float = 0.0
    _size: int = 0

    def __len__(self) -> int:
        return self._size

    def queued(self, client: str) -> int:
        return len(self._waiting.get(client, ()))

    def push(self, client: str, priority: int, item: T, cost: float) -> _Entry[T]:
        """Queue ``item``; raises QueueFull at either bound."""
        if self._size >= self.max_queued:
            raise QueueFull(f"the deployment's queue is full ({self._size} requests waiting)")
        backlog = self._waiting.get(client)
        if backlog is not None and len(backlog) >= self.max_per_client:
            raise QueueFull(f"{client} has {len(backlog)} requests waiting, the most one caller may")
        if not backlog:
            floor = min((self.counters[t] for t, q in self._waiting.items() if q), default=self._last_served)
            self.counters[client] = max(self.counters.get(client, 0.0), floor)
        entry = _Entry(client, priority, next(self._seq), item, cost)
        self._waiting.setdefault(client, deque()).append(entry)
        self._size += 1
        return entry

    def pop(self, skip: Collection[str] = ()) -> T | None:
        """The next request to dispatch (its client charged its cost), or None when none waits;
        clients in ``skip`` (at their share of the slots) wait."""
        # A client's head: its highest priority, then its earliest.
        heads = [min(q, key=lambda e: (-e.priority, e.seq)) for t, q in self._waiting.items() if q and t not in skip]
        if not heads:
            return None
        top = max(e.priority for e in heads)
        heads = [e for e in heads if e.priority == top]
        if self.fair:
            entry = min(heads, key=lambda e: (self.counters.get(e.client, 0.0), e.seq))
        else:
            entry = min(heads, key=lambda e: e.seq)
        self._take(entry)
        self.charge(entry.client, entry.cost)
        self._last_served = self.counters[entry.client]
        return entry.item

    def remove(self, entry: _Entry[T]) -> bool:
        """Take a request out unserved (its caller went away); False if it was already dispatched."""
        q = self._waiting.get(entry.client)
        if not q or entry not in q:
            return False
        self._take(entry)
        return True

    def charge(self, client: str, amount: float) -> None:
        """Advance (or, for an estimate corrected down, move back) the client's counter."""
        self.counters[client] = self.counters.get(client, 0.0) + amount

    def _take(self, entry: _Entry[T]) -> None:
        q = self._waiting[entry.client]
        q.remove(entry)
        self._size -= 1
        if not q:
            del self._waiting[entry.client]


@dataclass(frozen=True)
class Bucket:
    """One token bucket a request draws on: its Redis key, its per-minute limit, what it takes."""

    name: str  # what a refusal names: "tenant requests/min", "key tokens/min", ...
    key: str
    limit: int
    cost: int


@dataclass(frozen=True)
class Verdict:
    """A check's answer: admitted, or the bucket (or "concurrency") that refused and for how long;
    ``never`` when the cost is above the bucket's whole limit."""

    admitted: bool
    refused_by: str = ""
    wait_s: float = 0.0
    never: bool = False


def bucket_key(tenant: str, scope: str, what: str) -> str:
    """``scope`` is "tenant" or "key:{key_id}"; ``what`` is "rpm" or "tpm"."""
    return f"pylon:quota:{{{tenant}}}:{scope}:{what}"
