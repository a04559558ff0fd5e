"""Streaming text generation: the compute core of the torch engine, and the tiny GPT's runner.

``Runner`` is what the engine's server drives; ``ModelRunner`` (here, the byte-level tiny GPT)
and ``HfRunner`` (``hf_runner.py``, Hugging Face Llama directories) implement it and share this
module's argument validation, sampling, stop-string matching and ``GeneratedPiece`` stream.

``ModelRunner.generate`` yields one ``GeneratedPiece`` per sampled token, using the model's
key/value cache so each step costs one token of compute. Once the context reaches the model's
``block_size`` the runner slides the window: every further step recomputes the last
``block_size`` tokens (learned positions cannot be shifted inside a cache).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from pylon_services.ml.checkpoint import CheckpointFiles, load_model
from pylon_services.ml.gpt import (
    GPT,
    ByteTokenizer,
    GPTConfig,
    KVCache,
    StreamDecoder,
    autocast,
    resolve_device,
)

MAX_STOP_STRINGS = 16
FINISH_LENGTH = "length"
FINISH_STOP = "stop"
# Attention kernels for decoding. Not cuDNN's: it builds an execution plan for every new key
# length, and decoding grows the keys by one token per step, so on an H100 each token paid a new
# plan (19 tokens/s instead of ~430, 52% of CPU time in aten::_cudnn_attention_forward; measured
# with benchmarks/gpu_paths.py on an H100).
DECODE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# The byte vocabulary has no BOS token; an empty prompt starts from a line break instead.
EMPTY_PROMPT_START = "\n"


@dataclass(frozen=True)
class GeneratedPiece:
    """One streamed step: the text it releases and the token(s) sampled for it.

    ``text`` may be empty (half a UTF-8 character, or text held back because it could be the
    start of a stop string). ``finish_reason`` is set on the last piece only. The usage counters
    are running totals, so the last piece carries the request's figures.
    """

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling settings of one request."""

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop: tuple[str, ...]


class Runner(Protocol):
    """One loaded model that streams completions; what the engine's server serves."""

    device: torch.device
    # What is served, for logs: e.g. "pylon-tiny-gpt" or "LlamaForCausalLM".
    architecture: str

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
    ) -> Iterator[GeneratedPiece]:
        """Validate the arguments now (ValueError), then stream the completion lazily."""
        ...


class ModelRunner:
    """Holds one model on one device and serves any number of concurrent ``generate`` streams."""

    architecture = "pylon-tiny-gpt"

    def __init__(self, model: GPT, device: torch.device, *, use_kv_cache: bool = True) -> None:
        self.model = model.eval()
        self.config: GPTConfig = model.config
        self.device = device
        self.use_kv_cache = use_kv_cache
        self.tokenizer = ByteTokenizer()

    @classmethod
    def from_files(
        cls,
        files: CheckpointFiles,
        device: str | torch.device = "auto",
        *,
        use_kv_cache: bool = True,
    ) -> ModelRunner:
        """Load a checkpoint dict (see ``pylon_services.ml.checkpoint``) onto ``device``."""
        resolved = resolve_device(device)
        model, _ = load_model(files, resolved)
        return cls(model, resolved, use_kv_cache=use_kv_cache)

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
    ) -> Iterator[GeneratedPiece]:
        """Stream the continuation of ``prompt``, one piece per token.

        temperature 0 is greedy decoding; ``top_k`` 0 and ``top_p`` 1.0 disable those filters;
        the same ``seed`` gives the same sample. Generation ends after ``max_tokens`` tokens
        (finish_reason 'length') or right before the first ``stop`` string (finish_reason
        'stop'; the stop string itself is not returned). A prompt longer than the model's
        context keeps only its last ``block_size`` tokens. Raises ValueError on bad arguments,
        before any compute.
        """
        params = validate_params(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        return self._stream(prompt, params)

    def _stream(self, prompt: str, params: SamplingParams) -> Iterator[GeneratedPiece]:
        prompt_ids = self.tokenizer.encode(prompt)
        context = prompt_ids or self.tokenizer.encode(EMPTY_PROMPT_START)
        context = context[-self.config.block_size :]
        generator = sampling_generator(params)
        decoder = StreamDecoder()
        matcher = StopMatcher(params.stop)
        logits, cache = self._forward(context, None)
        for produced in range(1, params.max_tokens + 1):
            token = sample(logits, params, generator)
            context.append(token)
            text, stopped = matcher.feed(decoder.push(token))
            finish = FINISH_STOP if stopped else None
            if finish is None and produced == params.max_tokens:
                text += matcher.feed_final(decoder.flush())
                finish = FINISH_LENGTH
            yield GeneratedPiece(text, [token], finish, len(prompt_ids), produced)
            if finish is not None:
                return
            logits, cache = self._forward(context, cache)

    @torch.inference_mode()
    def _forward(
        self, context: list[int], cache: KVCache | None
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Next-token logits (fp32, CPU) after ``context``, extending ``cache`` when possible.

        With a cache only the newest token is computed. Without one (first call, cache disabled
        or the window full) the last ``block_size`` tokens are recomputed from scratch.
        Inference mode is entered per step, not around the generator, so it never leaks into
        the consumer's code between yields or across threads.
        """
        block = self.config.block_size
        cached = cache[0][0].size(2) if cache else 0
        if cache is not None and cached < block:
            ids, past = context[-1:], cache
        else:
            ids, past = context[-block:], None
        # A full window's cache could never be extended, so do not keep one.
        keep_cache = self.use_kv_cache and (past is not None or len(ids) < block)
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        with autocast(self.device), sdpa_kernel(DECODE_SDPA_BACKENDS):
            logits, new_cache = self.model(idx, past, use_cache=keep_cache)
        return logits[0, -1].float().cpu(), new_cache


def sampling_generator(params: SamplingParams) -> torch.Generator:
    """A CPU generator for one request: seeded when asked, so a seed reproduces its sample."""
    generator = torch.Generator()
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token from 1-D ``logits``: argmax at temperature 0, else filtered sampling."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    scores = logits / params.temperature
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Drop a token when the tokens ranked above it already cover top_p; the top one stays.
        drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return what is safe to emit and whether a stop string was reached."""
        self.pending += text
        hits = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = self._held_suffix_len()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def feed_final(self, text: str) -> str:
        """End of stream: add ``text`` and release everything up to any stop string."""
        out, stopped = self.feed(text)
        if not stopped:
            out, self.pending = out + self.pending, ""
        return out

    def _held_suffix_len(self) -> int:
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:k]):
                    longest = k
                    break
        return longest


def validate_params(
    prompt: str,
    *,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    stop: Sequence[str] | str,
) -> SamplingParams:
    """Check every argument of ``generate``; raise ValueError naming the first bad one."""
    if not isinstance(prompt, str):
        # ValueError, not TypeError: callers map every bad argument to INVALID_ARGUMENT.
        raise ValueError(  # noqa: TRY004
            f"prompt must be a string, got {type(prompt).__name__}"
        )
    if not _is_int(max_tokens) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if not _is_number(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not _is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an integer in [0, 2**63) or None, got {seed!r}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop strings must be non-empty strings, got {list(stops)!r}")
    return SamplingParams(max_tokens, float(temperature), top_k, float(top_p), seed, stops)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))
