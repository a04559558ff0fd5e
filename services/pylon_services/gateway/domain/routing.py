"""Replica routing and deployment state, as pure code over registrations (no I/O).

``Router`` picks the replica of one request: the replica of the caller's session, else the one
that last served the longest leading part of the prompt (its KV blocks are likely still cached
there), unless its load exceeds the least-loaded replica's by more than a bound, else the least
loaded. Load is outstanding tokens: the tokens of this gateway's requests in flight on the
replica that are still to be processed, plus an estimate for the requests other gateways sent
(from the replica's heartbeat), plus a penalty that grows with its KV-cache use.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STALE_AFTER_S = 10.0
POLICIES = ("prefix", "least_load", "round_robin")


@dataclass(frozen=True)
class ReplicaView:
    job_id: str
    address: str
    last_seen: float
    running: int  # running + waiting, as the replica last reported
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of the KV cache's blocks in use

    def fresh(self, now: float) -> bool:
        return now - self.last_seen <= STALE_AFTER_S

    @classmethod
    def from_heartbeat(cls, job_id: str, doc: Mapping[str, Any]) -> ReplicaView:
        """A registration as the replica heartbeats it (``engines/replica.py``)."""
        return cls(job_id, str(doc["address"]), float(doc["ts"]), int(doc.get("running", 0)),
                   int(doc.get("waiting", 0)), float(doc.get("kv_cache_usage", 0.0)))


@dataclass(frozen=True)
class RoutingConfig:
    policy: str = "prefix"  # one of POLICIES
    block_tokens: int = 16  # prompt token ids per hashed block (the engines' KV block size)
    block_chars: int = 64  # text prompts: characters per hashed block (about 16 tokens)
    max_blocks: int = 128  # only the leading blocks are hashed: the shared part is at the front
    load_bound_tokens: float = 2048.0  # how much busier than the least-loaded a cached replica may be
    other_request_tokens: float = 256.0  # load of a request another gateway sent (seen in heartbeats)
    kv_full_tokens: float = 4096.0  # load added by a full KV cache
    max_entries: int = 100_000  # prefix blocks and sessions remembered (least recently used go first)


@dataclass(frozen=True)
class Decision:
    replica: ReplicaView
    reason: str  # "session", "prefix_hit", "prefix_miss", "least_load" or "round_robin"
    matched_blocks: int = 0


def prefix_hashes(token_ids: Sequence[int], text: str, cfg: RoutingConfig) -> tuple[bytes, ...]:
    """Chained hashes of the prompt's leading full blocks: block ``i``'s hash covers blocks 0..i,
    so equal hashes mean equal prefixes. Token ids when the gateway has them (chats), else text."""
    chunks: Iterable[bytes]
    if token_ids:
        n = min(len(token_ids) // cfg.block_tokens, cfg.max_blocks)
        b = cfg.block_tokens
        chunks = (array("i", token_ids[i * b:(i + 1) * b]).tobytes() for i in range(n))
    else:
        n = min(len(text) // cfg.block_chars, cfg.max_blocks)
        raw = text[:n * cfg.block_chars]
        c = cfg.block_chars
        chunks = (raw[i * c:(i + 1) * c].encode() for i in range(n))
    out: list[bytes] = []
    h = b""
    for chunk in chunks:
        h = hashlib.blake2b(h + chunk, digest_size=8).digest()
        out.append(h)
    return tuple(out)


@dataclass
class Ticket:
    """One request's share of a replica's load, released as its tokens are processed."""

    address: str
    remaining: float
    prompt: float
    first_token: bool = False


@dataclass
class Router:
    """The routing state of one gateway process: its in-flight load per replica, the prefix
    blocks each replica served last, and sessions' replicas."""

    cfg: RoutingConfig = field(default_factory=RoutingConfig)
    _tokens: dict[str, float] = field(default_factory=dict)
    _requests: dict[str, int] = field(default_factory=dict)
    _prefixes: OrderedDict[bytes, str] = field(default_factory=OrderedDict)
    _sessions: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _turn: int = 0

    def load(self, r: ReplicaView) -> float:
        """Outstanding tokens on ``r``: this gateway's exactly, others' estimated from the heartbeat."""
        others = max(0, r.running - self._requests.get(r.address, 0))
        return (self._tokens.get(r.address, 0.0) + others * self.cfg.other_request_tokens
                + r.kv_usage * self.cfg.kv_full_tokens)

    def in_flight(self, address: str) -> int:
        return self._requests.get(address, 0)

    def choose(self, replicas: Sequence[ReplicaView], hashes: Sequence[bytes] = (), session: str = "",
               exclude: Iterable[str] = ()) -> Decision | None:
        """The replica for a request among ``replicas`` (already the healthy ones), none of
        ``exclude`` (addresses that failed this request). None when there is none."""
        skip = set(exclude)
        live = sorted((r for r in replicas if r.address not in skip), key=lambda r: r.address)
        if not live:
            return None
        if self.cfg.policy == "round_robin":
            self._turn += 1
            return Decision(live[self._turn % len(live)], "round_robin")
        loads = {r.address: self.load(r) for r in live}
        least = min(live, key=lambda r: (loads[r.address], self._requests.get(r.address, 0), r.address))
        bound = loads[least.address] + self.cfg.load_bound_tokens
        by_address = {r.address: r for r in live}
        if session:
            mine = by_address.get(self._sessions.get(session, ""))
            if mine is not None and loads[mine.address] <= bound:
                return Decision(mine, "session")
        if self.cfg.policy == "least_load" or not hashes:
            return Decision(least, "least_load")
        for depth in range(len(hashes), 0, -1):
            cached = by_address.get(self._prefixes.get(hashes[depth - 1], ""))
            if cached is not None:
                if loads[cached.address] <= bound:
                    return Decision(cached, "prefix_hit", depth)
                break  # the best holder is saturated: shorter prefixes are no better a reason
        return Decision(least, "prefix_miss")

    def start(self, decision: Decision, hashes: Sequence[bytes], session: str, prompt_tokens: int,
              max_new_tokens: int) -> Ticket:
        """Count a request on its replica and remember that the replica now holds its prefix."""
        address = decision.replica.address
        for h in hashes:
            self._remember(self._prefixes, h, address)
        if session:
            self._remember(self._sessions, session, address)
        ticket = Ticket(address, float(prompt_tokens + max_new_tokens), float(prompt_tokens))
        self._tokens[address] = self._tokens.get(address, 0.0) + ticket.remaining
        self._requests[address] = self._requests.get(address, 0) + 1
        return ticket

    def progress(self, ticket: Ticket, new_tokens: int) -> None:
        """``new_tokens`` were generated: the prompt is done at the first, each one is done."""
        done = float(new_tokens)
        if not ticket.first_token and new_tokens:
            ticket.first_token = True
            done += ticket.prompt
        done = min(done, ticket.remaining)
        ticket.remaining -= done
        self._tokens[ticket.address] = self._tokens.get(ticket.address, 0.0) - done

    def finish(self, ticket: Ticket) -> None:
        """The request ended (finished, failed or abandoned): release what it still held."""
        self._tokens[ticket.address] = max(0.0, self._tokens.get(ticket.address, 0.0) - ticket.remaining)
        ticket.remaining = 0.0
        n = self._requests.get(ticket.address, 0) - 1
        if n > 0:
            self._requests[ticket.address] = n
        else:
            self._requests.pop(ticket.address, None)
            self._tokens.pop(ticket.address, None)

    def _remember(self, table: OrderedDict[Any, str], key: Any, address: str) -> None:
        table[key] = address
        table.move_to_end(key)
        while len(table) > self.cfg.max_entries:
            table.popitem(last=False)


def pick_replica(replicas: list[ReplicaView], inflight: dict[str, int], now: float) -> ReplicaView | None:
    """Least loaded fresh replica: the gateway's own in-flight count first (exact), the
    replica's last reported load as a tie-breaker."""
    live = [r for r in replicas if r.fresh(now)]
    if not live:
        return None
    return min(live, key=lambda r: (inflight.get(r.address, 0), r.running, r.address))


def deployment_state(ready: int, desired: int, ended: list[str], slots: int, deleting: bool = False
                     ) -> tuple[str, str]:
    """(state, message) of a deployment: ``ready`` replicas serve, ``ended`` holds one line per
    replica job that is over (failed, cancelled or exited) out of ``slots`` replica jobs.
    FAILED once every replica job is over and none serves, with the first job's reason; IDLE when
    none is wanted (scaled to zero)."""
    if deleting:
        return "deleting", "stopping the replicas"
    if not desired:  # the autoscaler took it to zero
        return "idle", "scaled to zero: the next request starts a replica"
    if ready:
        return "ready", f"{ready}/{desired} replica(s) ready"
    if slots and len(ended) >= slots:
        return "failed", f"every replica job ended without serving; {ended[0]}"
    starting = f"; {len(ended)} replica job(s) ended: {ended[0]}" if ended else "; starting"
    return "pending", f"0/{desired} replica(s) ready{starting}"
