"""The built-in torch engine: ``InferenceEngine`` over continuous batching and a paged KV cache.

One thread owns the model and loops: take in new requests and aborts, let the scheduler pick
the step's chunks, run one forward pass over all of them (``paged.py``), sample the sequences
that reached their last known token (``sampler.py``), detokenize and check their stop
conditions, and hand each request's news to its asyncio queue. Requests join and leave the batch
between any two steps. The asyncio side only submits, reads and aborts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pylon_services.common.errors import InvalidArgument, Unavailable
from pylon_services.engines.contract import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    CompletionDelta,
    EngineInfo,
    EngineRequest,
    EngineStats,
    RequestOutput,
    TokenLogprob,
    invalid,
    length_violations,
    request_violations,
)
from pylon_services.engines.torch_engine.blocks import BlockPool
from pylon_services.engines.torch_engine.detokenize import IncrementalDecoder, StopMatcher
from pylon_services.engines.torch_engine.model import LoadedModel
from pylon_services.engines.torch_engine.paged import KVCache, build_step
from pylon_services.engines.torch_engine.sampler import SamplingRow, new_generator, sample
from pylon_services.engines.torch_engine.scheduler import Chunk, Scheduler, Sequence, Status
from pylon_services.engines.torch_engine.settings import TorchEngineConfig

log = logging.getLogger("pylon.engine.torch")
RATE_WINDOW_S = 10.0


@dataclass
class Completion:
    """Per-completion state the sampler and the detokenizer keep."""

    row: SamplingRow
    decoder: IncrementalDecoder
    stops: StopMatcher
    finish_reason: str | None = None
    new_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    reported: bool = False  # the finish reason has been sent


@dataclass
class RequestState:
    request: EngineRequest
    seqs: list[Sequence]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]
    done: bool = False


class TorchEngine:
    """Serves one loaded model; see the module docstring."""

    def __init__(self, loaded: LoadedModel, cfg: TorchEngineConfig) -> None:
        self.m, self.cfg = loaded, cfg
        per_block = KVCache.bytes_per_block(loaded.layers, cfg.block_size, loaded.kv_heads, loaded.head_dim,
                                            loaded.dtype)
        num_blocks = cfg.kv_cache_memory_bytes // per_block
        capacity = num_blocks * cfg.block_size
        limits = [loaded.context_len, capacity] + ([cfg.max_model_len] if cfg.max_model_len else [])
        self.max_model_len = min(limits)
        if self.max_model_len < 2:
            raise ValueError(f"a KV cache of {cfg.kv_cache_memory_bytes} bytes holds {capacity} tokens of this "
                             f"model ({per_block} bytes per block of {cfg.block_size}); it needs more")
        if capacity < loaded.context_len and not cfg.max_model_len:
            log.warning("the KV cache holds %d tokens, less than the model's context of %d: requests are "
                        "limited to %d tokens", capacity, loaded.context_len, capacity)
        self.pool = BlockPool(num_blocks, cfg.block_size, prefix_caching=cfg.enable_prefix_caching)
        self.cache = KVCache(loaded.layers, num_blocks, cfg.block_size, loaded.kv_heads, loaded.head_dim,
                             loaded.dtype, loaded.device)
        self.scheduler = Scheduler(self.pool, max_num_seqs=cfg.max_num_seqs,
                                   max_num_batched_tokens=max(cfg.max_num_batched_tokens, 1))
        self.info = EngineInfo("torch", loaded.architecture, str(loaded.device), self.max_model_len, cfg.max_num_seqs)
        self._requests: dict[str, RequestState] = {}
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._error: BaseException | None = None
        self._prompt_tokens = 0
        self._generated = 0
        self._rate: collections.deque[tuple[float, int]] = collections.deque()
        self._thread = threading.Thread(target=self._loop, name="pylon-engine", daemon=True)
        self._thread.start()

    # --- the port ------------------------------------------------------------------------------

    def check_request(self, request: EngineRequest) -> int:
        return len(self._prompt_ids(request))

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        ids = self._prompt_ids(request)
        if self._error is not None or self._stopping:
            raise Unavailable("the engine is not running")
        state = RequestState(request, [], asyncio.get_running_loop(), asyncio.Queue())
        self._submit("add", (state, ids))
        try:
            while True:
                out = await state.queue.get()
                if isinstance(out, BaseException):
                    raise out
                yield out
                if out.finished:
                    return
        finally:
            if not state.done:
                self._submit("abort", request.request_id)

    async def abort(self, request_id: str) -> bool:
        known = request_id in self._requests
        self._submit("abort", request_id)
        return known

    def stats(self) -> EngineStats:
        now = time.monotonic()
        recent = sum(n for t, n in list(self._rate) if t >= now - RATE_WINDOW_S)
        return EngineStats(
            waiting=len(self.scheduler.waiting), running=len(self.scheduler.running),
            kv_blocks_used=self.pool.num_used, kv_blocks_total=self.pool.num_blocks,
            prefix_cache_queries=self.scheduler.prefix_queries, prefix_cache_hits=self.scheduler.prefix_hits,
            prompt_tokens=self._prompt_tokens, generation_tokens=self._generated,
            preemptions=self.scheduler.preemptions, tokens_per_s=recent / RATE_WINDOW_S)

    async def check_health(self) -> None:
        if self._error is not None:
            raise Unavailable(f"the engine's loop failed: {self._error}")
        if not self._thread.is_alive():
            raise Unavailable("the engine's loop has stopped")

    async def shutdown(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join, 30)

    # --- request intake (any thread) -----------------------------------------------------------

    def _prompt_ids(self, request: EngineRequest) -> list[int]:
        bad = request_violations(request, vocab_size=self.m.vocab_size)
        if bad:
            raise invalid(bad)
        ids = list(request.prompt_token_ids) or self.m.tokenizer.encode(request.prompt).ids
        bad = length_violations(len(ids), request.sampling.max_tokens, self.max_model_len)
        if bad:
            raise invalid(bad)
        if request.request_id in self._requests:
            raise InvalidArgument.field("request_id", f"{request.request_id!r} is already running on this replica")
        return ids

    def _submit(self, kind: str, payload: Any) -> None:
        with self._wake:
            self._inbox.append((kind, payload))
            self._wake.notify()

    # --- the engine thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._take_inbox():
                    chunks = self.scheduler.schedule()
                    if chunks:
                        self.step(chunks)
            for state in list(self._requests.values()):  # shut down with requests still open
                self._deliver(state, Unavailable("the engine shut down"))
        except BaseException as exc:  # noqa: BLE001 - every waiting request learns why
            log.exception("the engine loop failed")
            self._error = exc
            for state in list(self._requests.values()):
                self._deliver(state, Unavailable(f"the engine failed: {exc}"))

    def _take_inbox(self) -> bool:
        """Apply queued adds and aborts; wait while there is nothing to do. False once stopping."""
        with self._wake:
            while not self._inbox and not self.scheduler.has_work() and not self._stopping:
                self._wake.wait()
            items = list(self._inbox)
            self._inbox.clear()
            if self._stopping:
                return False
        for kind, payload in items:
            if kind == "add":
                self._add(*payload)
            else:
                self._abort_now(payload)
        return True

    def _add(self, state: RequestState, ids: list[int]) -> None:
        r = state.request
        if r.request_id in self._requests:
            self._deliver(state, InvalidArgument.field("request_id", f"{r.request_id!r} is already running"))
            return
        for index in range(r.sampling.n):
            seq = Sequence(r.request_id, index, list(ids), len(ids))
            seq.state = Completion(SamplingRow(r.sampling, new_generator(r.sampling.seed, index), ids, []),
                                   IncrementalDecoder(self.m.tokenizer, ids), StopMatcher(r.sampling.stop))
            state.seqs.append(seq)
        first, *rest = state.seqs
        for sib in rest:
            sib.status = Status.HELD
        first.siblings = rest
        self.scheduler.add(first)
        self._requests[r.request_id] = state
        self._prompt_tokens += len(ids)

    def _abort_now(self, request_id: str) -> None:
        state = self._requests.pop(request_id, None)
        if state is None:
            return
        self.scheduler.drop(lambda s: s.request_id == request_id)
        for seq in state.seqs:
            if seq.state.finish_reason is None:
                seq.state.finish_reason = FINISH_ABORT
        self._emit(state)

    def step(self, chunks: list[Chunk]) -> None:
        """One forward pass over ``chunks``, then sampling and delivery."""
        ids, positions, meta, rows = build_step(chunks, self.cache, self.m.device)
        logits = self.m.model(input_ids=ids, position_ids=positions, use_cache=False, pylon_step=meta,
                              logits_to_keep=rows).logits[0]
        sampling = [c.seq for c in chunks if c.samples]
        for chunk in chunks:
            self.scheduler.computed(chunk)  # forked completions compute their first token later
        touched: dict[str, RequestState] = {}
        if sampling:
            tokens, logprobs = sample(logits, [s.state.row for s in sampling])
            for seq, token, lp in zip(sampling, tokens, logprobs, strict=True):
                self._append(seq, token, lp)
                touched[seq.request_id] = self._requests[seq.request_id]
        self._generated += len(sampling)
        self._rate.append((time.monotonic(), len(sampling)))
        while self._rate and self._rate[0][0] < time.monotonic() - RATE_WINDOW_S:
            self._rate.popleft()
        for state in touched.values():
            self._emit(state)

    def _append(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        c: Completion = seq.state
        o = c.row.options
        seq.tokens.append(token)
        c.row.output_ids.append(token)
        c.new_ids.append(token)
        if logprob is not None:
            c.new_logprobs.append(logprob)
        if (token in self.m.eos_ids and not o.ignore_eos) or token in o.stop_token_ids:
            c.finish_reason = FINISH_STOP
            c.new_text += c.stops.feed_final(c.decoder.flush())
        else:
            text, stopped = c.stops.feed(c.decoder.push(token))
            c.new_text += text
            if stopped:
                c.finish_reason = FINISH_STOP
            elif seq.output_len >= (o.max_tokens or self.max_model_len) or len(seq.tokens) >= self.max_model_len:
                c.finish_reason = FINISH_LENGTH
                c.new_text += c.stops.feed_final(c.decoder.flush())
        if c.finish_reason is not None:
            self.scheduler.finish(seq)

    def _emit(self, state: RequestState) -> None:
        """Send what the request's completions produced since the last output."""
        deltas = []
        for seq in state.seqs:
            c: Completion = seq.state
            newly_done = c.finish_reason is not None and not c.reported
            if c.new_ids or c.new_text or newly_done:
                deltas.append(CompletionDelta(seq.index, c.new_text, tuple(c.new_ids), tuple(c.new_logprobs),
                                              c.finish_reason))
                c.new_ids, c.new_text, c.new_logprobs = [], "", []
                c.reported = c.finish_reason is not None
        finished = all(s.state.finish_reason is not None for s in state.seqs)
        if finished:
            self._requests.pop(state.request.request_id, None)
        first = state.seqs[0]
        self._deliver(state, RequestOutput(state.request.request_id, tuple(deltas), prompt_tokens=first.prompt_len,
                                           completion_tokens=sum(s.output_len for s in state.seqs),
                                           cached_tokens=first.cached, finished=finished))

    def _deliver(self, state: RequestState, item: RequestOutput | BaseException) -> None:
        if isinstance(item, BaseException) or item.finished:
            state.done = True
        state.loop.call_soon_threadsafe(state.queue.put_nowait, item)

