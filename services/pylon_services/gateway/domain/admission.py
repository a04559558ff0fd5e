"""Admission, pure: a tenant's serving limits, a request's priority and token reservation, and
the fair queue in front of a deployment (the virtual token counter of "Fairness in Serving Large
Language Models", OSDI 2024).

The token buckets themselves run in Redis (``store/quotas.py``) so every gateway replica shares
them; the fair queue is per gateway process, in memory, because it orders requests waiting in
this process for one of its dispatch slots. A deployment shared across tenants has one queue:
the fair queue is hierarchical, tenants first, then the API keys of the chosen tenant.
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
    tenant: str
    key: str
    priority: int
    seq: int
    item: T
    cost: float  # counter units charged at dispatch (weighted, estimated input tokens)


@dataclass
class FairQueue(Generic[T]):
    """Requests waiting for a deployment, ordered by priority and then, hierarchically, by
    virtual token counters (fair=True) or by arrival (fair=False, FIFO): first the tenant with
    the smallest counter among tenants with a backlog, then, within it, the API key with the
    smallest counter among its keys with a backlog. A tenant's share does not grow with its
    number of keys, and one application of a tenant cannot starve another of the same tenant.

    Counters grow by served tokens (the caller divides by the tenant's weight). A tenant that
    joins the backlog has its counter lifted to the smallest counter of the backlogged tenants
    (or, none being, to that of the last tenant served), and a key likewise among its tenant's
    keys, so idle time is not banked as credit.
    """

    max_queued: int
    max_per_client: int  # requests waiting per API key
    fair: bool = True
    counters: dict[str, float] = field(default_factory=dict)  # by tenant
    key_counters: dict[tuple[str, str], float] = field(default_factory=dict)  # by (tenant, key)
    _waiting: dict[str, dict[str, deque[_Entry[T]]]] = field(default_factory=dict)  # tenant -> key -> FIFO
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _last_served: float = 0.0
    _last_key: dict[str, float] = field(default_factory=dict)  # by tenant: its last served key's counter
    _size: int = 0

    def __len__(self) -> int:
        return self._size

    def queued(self, tenant: str, key: str | None = None) -> int:
        """Requests waiting of ``tenant`` (of its ``key`` only, when given)."""
        keys = self._waiting.get(tenant, {})
        if key is not None:
            return len(keys.get(key, ()))
        return sum(len(q) for q in keys.values())

    def push(self, tenant: str, key: str, priority: int, item: T, cost: float) -> _Entry[T]:
        """Queue ``item``; raises QueueFull at either bound."""
        if self._size >= self.max_queued:
            raise QueueFull(f"the deployment's queue is full ({self._size} requests waiting)")
        keys = self._waiting.get(tenant)
        backlog = keys.get(key) if keys else None
        if backlog is not None and len(backlog) >= self.max_per_client:
            raise QueueFull(f"{tenant}/{key} has {len(backlog)} requests waiting, the most one caller may")
        if not keys:
            floor = min((self.counters[t] for t in self._waiting), default=self._last_served)
            self.counters[tenant] = max(self.counters.get(tenant, 0.0), floor)
            keys = self._waiting[tenant] = {}
        if not backlog:
            floor = min((self.key_counters[(tenant, k)] for k in keys), default=self._last_key.get(tenant, 0.0))
            self.key_counters[(tenant, key)] = max(self.key_counters.get((tenant, key), 0.0), floor)
        entry = _Entry(tenant, key, priority, next(self._seq), item, cost)
        keys.setdefault(key, deque()).append(entry)
        self._size += 1
        return entry

    def pop(self, skip_tenants: Collection[str] = (),
            skip_keys: Collection[tuple[str, str]] = ()) -> T | None:
        """The next request to dispatch (its tenant and key charged its cost), or None when none
        waits; tenants in ``skip_tenants`` and (tenant, key)s in ``skip_keys`` (at their share of
        the slots) wait."""
        # A key's head: its highest priority, then its earliest.
        heads = [min(q, key=lambda e: (-e.priority, e.seq))
                 for t, keys in self._waiting.items() if t not in skip_tenants
                 for k, q in keys.items() if (t, k) not in skip_keys]
        if not heads:
            return None
        top = max(e.priority for e in heads)
        heads = [e for e in heads if e.priority == top]
        if self.fair:
            tenant = min(heads, key=lambda e: (self.counters[e.tenant], e.seq)).tenant
            entry = min((e for e in heads if e.tenant == tenant),
                        key=lambda e: (self.key_counters[(e.tenant, e.key)], e.seq))
        else:
            entry = min(heads, key=lambda e: e.seq)
        self._take(entry)
        self.charge(entry.tenant, entry.key, entry.cost)
        self._last_served = self.counters[entry.tenant]
        self._last_key[entry.tenant] = self.key_counters[(entry.tenant, entry.key)]
        return entry.item

    def remove(self, entry: _Entry[T]) -> bool:
        """Take a request out unserved (its caller went away); False if it was already dispatched."""
        q = self._waiting.get(entry.tenant, {}).get(entry.key)
        if not q or entry not in q:
            return False
        self._take(entry)
        return True

    def charge(self, tenant: str, key: str, amount: float) -> None:
        """Advance (or, for an estimate corrected down, move back) the tenant's and the key's counters."""
        self.counters[tenant] = self.counters.get(tenant, 0.0) + amount
        self.key_counters[(tenant, key)] = self.key_counters.get((tenant, key), 0.0) + amount

    def _take(self, entry: _Entry[T]) -> None:
        keys = self._waiting[entry.tenant]
        q = keys[entry.key]
        q.remove(entry)
        self._size -= 1
        if not q:
            del keys[entry.key]
            if not keys:
                del self._waiting[entry.tenant]


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
