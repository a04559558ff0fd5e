"""Continuous batching: which tokens of which sequences the next forward pass computes.

Every step has a token budget (``max_num_batched_tokens``) and a sequence cap (``max_num_seqs``).
Running sequences go first, oldest first: a decoding one needs one token, one still prefilling
takes what is left of its prompt up to the budget (chunked prefill), so long prompts never stall
the decodes beside them. Waiting sequences are admitted after, first come first served, while
the budget, the cap and the free KV blocks allow; an admitted prompt first picks up the cached
blocks of its longest cached prefix. When a running sequence needs a block and none is free, the
newest running sequence is preempted: its blocks go back (its full ones stay in the prefix
cache) and it waits at the front of the queue to be recomputed, prompt and output so far, so
memory never runs out and no request fails for it (vLLM's recompute preemption).

The ``n`` completions of one request share its prompt: the first prefills it, the others then
take its full blocks (reference counted) and compute only the prompt's last partial block.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pylon_services.engines.torch_engine.blocks import BlockPool, block_key


class Status(enum.Enum):
    HELD = "held"  # a sibling waiting for its request's first completion to prefill the prompt
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One completion being generated: prompt plus output tokens and where their KV lives."""

    request_id: str
    index: int
    tokens: list[int]
    prompt_len: int
    arrival: float = field(default_factory=time.monotonic)
    computed: int = 0  # leading tokens whose keys and values are in the cache
    cached: int = 0  # prompt tokens the prefix cache supplied at first admission
    blocks: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # prefix-cache keys of the full blocks so far
    status: Status = Status.WAITING
    looked_up: bool = False
    admitted: bool = False
    siblings: list[Sequence] = field(default_factory=list)  # held until this one has prefilled
    state: Any = None  # the engine's per-completion state (sampling, detokenizing)

    @property
    def output_len(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def to_compute(self) -> int:
        return len(self.tokens) - self.computed


@dataclass(frozen=True)
class Chunk:
    """``count`` tokens of ``seq`` from position ``start``; ``samples`` when it ends the sequence's
    known tokens, so its last position's logits pick the next token."""

    seq: Sequence
    start: int
    count: int

    @property
    def samples(self) -> bool:
        return self.start + self.count == len(self.seq.tokens)


class Scheduler:
    def __init__(self, pool: BlockPool, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.prefix_queries = 0  # prompt tokens of admitted requests looked up in the prefix cache
        self.prefix_hits = 0  # of those, found there

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Chunk]:
        """The next step's chunks (empty when nothing can run)."""
        chunks: list[Chunk] = []
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            count = min(seq.to_compute, budget)
            if not self._reserve(seq, count, preempting=True):
                continue  # seq itself was preempted; running[i] is now the next one
            chunks.append(Chunk(seq, seq.computed, count))
            budget -= count
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.looked_up:
                self._take_cached_prefix(seq)
            count = min(seq.to_compute, budget)
            if not self._reserve(seq, count, preempting=False):
                self._free(seq)  # hold no cached blocks while waiting: the running may need them
                break
            if not seq.admitted:  # a prompt counts once in the hit rate, not at each recompute
                seq.admitted, seq.cached = True, seq.computed
                self.prefix_queries += seq.prompt_len
                self.prefix_hits += seq.cached
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            chunks.append(Chunk(seq, seq.computed, count))
            budget -= count
        return chunks

    def computed(self, chunk: Chunk) -> list[Sequence]:
        """Record a chunk's tokens as cached (keying the blocks they filled); returns the siblings
        released now that their shared prompt is in the cache."""
        seq = chunk.seq
        seq.computed = chunk.start + chunk.count
        bs = self.pool.block_size
        while len(seq.keys) < seq.computed // bs:
            n = len(seq.keys)
            key = block_key(seq.keys[-1] if seq.keys else None, seq.tokens[n * bs:(n + 1) * bs])
            seq.keys.append(key)
            self.pool.register(seq.blocks[n], key)
        released: list[Sequence] = []
        if seq.siblings and seq.computed >= seq.prompt_len:
            released, seq.siblings = seq.siblings, []
            for sib in reversed(released):
                self._fork(seq, sib)
        return released

    def finish(self, seq: Sequence) -> None:
        """Take ``seq`` out of the queues and give its blocks back."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        self._free(seq)
        for sib in seq.siblings:  # an aborted request's held completions go with it
            sib.status = Status.FINISHED
        seq.siblings = []

    def drop(self, predicate: Callable[[Sequence], bool]) -> list[Sequence]:
        """Finish every queued or running sequence ``predicate`` picks (aborts)."""
        gone = [s for s in [*self.running, *self.waiting] if predicate(s)]
        for seq in gone:
            self.finish(seq)
        return gone

    # --- internals -----------------------------------------------------------------------------

    def _reserve(self, seq: Sequence, count: int, *, preempting: bool) -> bool:
        """Blocks for ``count`` more tokens of ``seq``; may preempt newer running sequences."""
        bs = self.pool.block_size
        need = -(-(seq.computed + count) // bs) - len(seq.blocks)
        while need > self.pool.num_free:
            if not preempting:
                return False
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        if need > 0:
            seq.blocks += self.pool.allocate(need)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _free(self, seq: Sequence) -> None:
        self.pool.release(seq.blocks)
        seq.blocks, seq.keys, seq.computed, seq.looked_up = [], [], 0, False

    def _take_cached_prefix(self, seq: Sequence) -> None:
        # At least the last token is computed: its logits pick the next one.
        blocks, keys = self.pool.lookup(seq.tokens, limit=len(seq.tokens) - 1)
        seq.blocks, seq.keys, seq.computed, seq.looked_up = blocks, keys, len(blocks) * self.pool.block_size, True

    def _fork(self, parent: Sequence, sib: Sequence) -> None:
        """``sib`` shares ``parent``'s full prompt blocks and computes the rest itself."""
        bs = self.pool.block_size
        full = min(parent.prompt_len - 1, len(parent.tokens) - 1) // bs
        sib.blocks, sib.keys = parent.blocks[:full], parent.keys[:full]
        self.pool.share(sib.blocks)
        sib.computed, sib.looked_up, sib.admitted = full * bs, True, True  # counted with its request
        sib.status = Status.WAITING
        self.waiting.appendleft(sib)
