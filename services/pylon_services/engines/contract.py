"""The inference-engine port: what a replica server (``engines/replica.py``) needs from an engine,
and what the built-in torch engine and the vLLM adapter implement.

In the spirit of vLLM's ``EngineClient``: ``generate`` is an async iterator of incremental
outputs for one request, ``abort`` ends a request, ``stats`` is a cheap snapshot for heartbeats,
metrics and routing, ``check_health`` raises when the engine is dead. Torch-free, so the gateway
and the API may import its types and rules.

A request carries either text or token ids, and ``SamplingOptions`` with the OpenAI / vLLM names.
``check_request`` is the one set of rules for both engines; an engine refuses a request with
``InvalidArgument`` naming the field (the replica answers INVALID_ARGUMENT) and an overloaded one
with ``ResourceExhausted`` and a retry delay.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pylon_services.common.errors import FieldViolation, InvalidArgument

MAX_PROMPT_BYTES = 256 * 1024
MAX_TOKENS = 8192
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1_000_000
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_N = 16
MAX_LOGPROBS = 20
MAX_PENALTY = 2.0  # presence / frequency penalties lie in [-2, 2] (OpenAI's range)
MAX_REPETITION_PENALTY = 10.0

FINISH_LENGTH = "length"
FINISH_STOP = "stop"
FINISH_ABORT = "abort"


@dataclass(frozen=True)
class SamplingOptions:
    """How to decode one request (vLLM's ``SamplingParams`` names; the defaults change nothing).

    ``max_tokens`` None means up to the model's context. ``temperature`` 0 is greedy. ``top_k`` 0
    and ``top_p`` 1 and ``min_p`` 0 filter nothing. ``repetition_penalty`` divides (or, for
    negative logits, multiplies) the logits of every token already in the prompt or the output;
    ``presence_penalty`` and ``frequency_penalty`` subtract, per output token, once and per
    occurrence. ``stop`` strings end the output before them (never streamed); ``stop_token_ids``
    end it after that token. ``seed`` makes the sample reproducible whatever else shares the batch.
    ``logprobs`` None returns none; k returns the sampled token's plus the k most likely.
    ``n`` completions share the prompt's KV blocks.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None


@dataclass(frozen=True)
class EngineRequest:
    """One prompt, as text or as token ids (exactly one of the two)."""

    request_id: str
    prompt: str = ""
    prompt_token_ids: tuple[int, ...] = ()
    sampling: SamplingOptions = field(default_factory=SamplingOptions)


@dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's log-probability and the ``k`` most likely alternatives at that step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class CompletionDelta:
    """What one of a request's ``n`` completions added since the last output.

    ``text`` may be empty (half a UTF-8 character, or text held back because it could begin a
    stop string); ``finish_reason`` is set once, on the completion's last delta.
    """

    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None


@dataclass(frozen=True)
class RequestOutput:
    """One step's news for a request. ``cached_tokens``: prompt tokens served from the prefix
    cache; the counters are the request's totals so far, so the last output has its usage."""

    request_id: str
    deltas: tuple[CompletionDelta, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    finished: bool = False


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, for heartbeats, ``GetStats``, metrics and routing."""

    waiting: int = 0
    running: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache, ever
    prefix_cache_hits: int = 0  # of those, found cached
    prompt_tokens: int = 0  # totals since start
    generation_tokens: int = 0
    preemptions: int = 0
    tokens_per_s: float = 0.0  # generated tokens per second over the last few seconds

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0


@dataclass(frozen=True)
class EngineInfo:
    """What a loaded engine serves."""

    engine: str  # "torch" or "vllm"
    architecture: str  # e.g. "LlamaForCausalLM"
    device: str  # "cpu", "cuda:0"
    max_model_len: int
    max_num_seqs: int


class InferenceEngine(Protocol):
    """A loaded model serving many concurrent requests."""

    info: EngineInfo

    def check_request(self, request: EngineRequest) -> int:
        """The prompt's length in tokens; ``InvalidArgument`` naming the field when the engine
        cannot serve ``request`` (bad sampling values, a prompt longer than the context). Cheap,
        before any queuing."""
        ...

    def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Stream ``request``'s outputs until every completion has finished. Leaving the
        iterator early (``aclose``, cancellation) aborts the request and frees its memory."""
        ...

    async def abort(self, request_id: str) -> bool:
        """End a running or waiting request; False when it is not known (already finished)."""
        ...

    def stats(self) -> EngineStats:
        ...

    async def check_health(self) -> None:
        """Raise when the engine can no longer serve (its loop died)."""
        ...

    async def shutdown(self) -> None:
        ...


def sampling_violations(s: SamplingOptions, prefix: str = "sampling.") -> list[FieldViolation]:
    """The rules every engine applies to sampling options (fields named ``{prefix}{name}``)."""
    bad: list[FieldViolation] = []

    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            bad.append(FieldViolation(prefix + name, rule))

    need(s.max_tokens is None or 1 <= s.max_tokens <= MAX_TOKENS, "max_tokens", f"must be between 1 and {MAX_TOKENS}")
    need(_finite_in(s.temperature, 0, MAX_TEMPERATURE), "temperature",
         f"must be a finite number between 0 (greedy) and {MAX_TEMPERATURE:g}")
    need(_finite_in(s.top_p, 0, 1) and s.top_p > 0, "top_p", "must be in (0, 1]")
    need(0 <= s.top_k <= MAX_TOP_K, "top_k", f"must be between 0 (off) and {MAX_TOP_K}")
    need(_finite_in(s.min_p, 0, 1), "min_p", "must be in [0, 1]")
    need(_finite_in(s.repetition_penalty, 0, MAX_REPETITION_PENALTY) and s.repetition_penalty > 0,
         "repetition_penalty", f"must be in (0, {MAX_REPETITION_PENALTY:g}]")
    for name in ("presence_penalty", "frequency_penalty"):
        need(_finite_in(getattr(s, name), -MAX_PENALTY, MAX_PENALTY), name,
             f"must be between {-MAX_PENALTY:g} and {MAX_PENALTY:g}")
    if len(s.stop) > MAX_STOP_STRINGS:
        need(False, "stop", f"at most {MAX_STOP_STRINGS} stop strings")
    else:
        need(all(0 < len(x) <= MAX_STOP_CHARS for x in s.stop), "stop",
             f"each stop string must be 1-{MAX_STOP_CHARS} characters")
    need(len(s.stop_token_ids) <= MAX_STOP_TOKEN_IDS and all(t >= 0 for t in s.stop_token_ids), "stop_token_ids",
         f"at most {MAX_STOP_TOKEN_IDS} non-negative token ids")
    need(s.seed is None or 0 <= s.seed < 2**63, "seed", "must be in [0, 2**63)")
    need(1 <= s.n <= MAX_N, "n", f"must be between 1 and {MAX_N}")
    need(s.logprobs is None or 0 <= s.logprobs <= MAX_LOGPROBS, "logprobs", f"must be between 0 and {MAX_LOGPROBS}")
    return bad


def request_violations(r: EngineRequest, *, vocab_size: int | None = None) -> list[FieldViolation]:
    """The shape of a request before tokenization: one of prompt / prompt_token_ids, bounded."""
    bad = sampling_violations(r.sampling)
    if bool(r.prompt) == bool(r.prompt_token_ids):
        bad.append(FieldViolation("prompt", "give exactly one of prompt and prompt_token_ids"))
    elif len(r.prompt.encode()) > MAX_PROMPT_BYTES:
        bad.append(FieldViolation("prompt", f"must be at most {MAX_PROMPT_BYTES >> 10} KiB"))
    elif vocab_size is not None and any(not 0 <= t < vocab_size for t in r.prompt_token_ids):
        bad.append(FieldViolation("prompt_token_ids", f"each id must be in [0, {vocab_size})"))
    if vocab_size is not None and any(t >= vocab_size for t in r.sampling.stop_token_ids):
        bad.append(FieldViolation("sampling.stop_token_ids", f"each id must be below the vocabulary size {vocab_size}"))
    return bad


def length_violations(prompt_len: int, max_tokens: int | None, max_model_len: int) -> list[FieldViolation]:
    """Whether a tokenized prompt plus its completion fits the model's context."""
    if prompt_len >= max_model_len:
        return [FieldViolation("prompt", f"is {prompt_len} tokens; the model's context is {max_model_len} "
                                         f"and leaves no room for a completion")]
    if max_tokens is not None and prompt_len + max_tokens > max_model_len:
        return [FieldViolation("sampling.max_tokens", f"{max_tokens} new tokens after a {prompt_len}-token prompt "
                                                      f"exceed the model's context of {max_model_len}")]
    return []


def invalid(bad: Sequence[FieldViolation]) -> InvalidArgument:
    """One InvalidArgument for several violations (the message lists the first few)."""
    return InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in bad[:20]), list(bad[:100]))


def _finite_in(x: float, lo: float, hi: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and lo <= x <= hi
