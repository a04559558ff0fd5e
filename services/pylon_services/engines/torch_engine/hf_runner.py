"""Streaming generation from a Hugging Face Llama directory: the torch engine's ``HfRunner``.

One request at a time per call to ``generate``, each with its own ``KVCache``: the prompt is
prefilled in one forward pass, then each step computes one token. Sampling, validation, stop
strings and the ``GeneratedPiece`` stream are ``runner.py``'s, shared with the tiny GPT.
Text is detokenized incrementally (``IncrementalDecoder``) so a streamed piece never holds half
a UTF-8 character.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.nn.attention import sdpa_kernel

from pylon_services.engines.torch_engine.runner import (
    DECODE_SDPA_BACKENDS,
    FINISH_LENGTH,
    FINISH_STOP,
    GeneratedPiece,
    SamplingParams,
    StopMatcher,
    sample,
    sampling_generator,
    validate_params,
)
from pylon_services.ml.gpt import resolve_device
from pylon_services.ml.hf import (
    CONFIG_FILE,
    eos_token_ids,
    load_hf_model,
    load_tokenizer,
    read_hf_spec,
)
from pylon_services.ml.llama import KVCache, Llama

# Prompt tokens the detokenizer decodes ahead of the first new token, so a tokenizer that
# strips a leading space when decoding from scratch (SentencePiece) still spaces it right.
PROMPT_LOOKBACK = 5
REPLACEMENT_CHAR = "\ufffd"  # what decoding half a UTF-8 character yields
SERVED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


class IncrementalDecoder:
    """Turns generated token ids into text deltas that never end inside a UTF-8 character.

    Decodes a short window (the ids since the last emitted text plus a little context) rather
    than everything so far, so each step costs O(1); a delta is released once its decoded text
    no longer ends in U+FFFD (the replacement character of an incomplete byte sequence).
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context[-PROMPT_LOOKBACK:]) if PROMPT_LOOKBACK else []
        self.prefix = 0  # window start: decoded as context only
        self.read = len(self.ids)  # ids before this have been emitted

    def push(self, token: int) -> str:
        """Add one generated token; return the new text that is complete, or ""."""
        self.ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        """End of stream: return whatever is held back, incomplete characters included."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) <= len(before) or (text.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


class HfRunner:
    """Holds one HF Llama model and its tokenizer on one device; serves ``generate`` streams."""

    def __init__(self, model: Llama, tokenizer: Tokenizer, eos_ids: Sequence[int], *,
                 bos_id: int | None = None, architecture: str = "LlamaForCausalLM") -> None:
        self.model = model.eval()
        self.spec = model.spec
        self.device = model.model.embed_tokens.weight.device
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.architecture = architecture
        # An empty prompt starts from the bos token, else the eos token (the document
        # separator a Pylon-trained model has seen before every document).
        start = bos_id if bos_id is not None else next(iter(eos_ids), None)
        self.start_ids = [start] if start is not None else []
        if self.spec.max_position_embeddings < 2:
            raise ValueError("a context of one token leaves no room to generate")

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str],
                       device: str | torch.device = "auto") -> HfRunner:
        """Load an HF Llama directory: bf16 on CUDA, fp32 on CPU. ValueError if unservable."""
        architecture = served_architecture(directory)
        resolved = resolve_device(device)
        dtype = torch.bfloat16 if resolved.type == "cuda" else torch.float32
        spec = read_hf_spec(directory)
        tokenizer = load_tokenizer(directory)
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size > spec.vocab_size:
            raise ValueError(f"{directory}: the tokenizer has {size} tokens but the model's "
                             f"vocab_size is {spec.vocab_size}")
        model = load_hf_model(directory, device=resolved, dtype=dtype)
        return cls(model, tokenizer, eos_token_ids(directory), bos_id=spec.bos_token_id,
                   architecture=architecture)

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

        The same contract as ``ModelRunner.generate``, plus: an eos token ends the stream with
        finish_reason 'stop' (its id is in the last piece, its text is not), and so does the
        context length with 'length'. A prompt that fills the context keeps its last tokens,
        leaving room for ``max_tokens`` but keeping at least half the context. Raises
        ValueError on bad arguments, before any compute.
        """
        params = validate_params(prompt, max_tokens=max_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, stop=stop)
        prompt_ids = self.tokenizer.encode(prompt).ids if prompt else []
        if not prompt_ids and not self.start_ids:
            raise ValueError("prompt must encode to at least one token: this model has no bos "
                             "or eos token to start from")
        return self._stream(prompt_ids, params)

    def _stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[GeneratedPiece]:
        context = self._context(prompt_ids or self.start_ids, params.max_tokens)
        steps = min(params.max_tokens, self.spec.max_position_embeddings - len(context))
        generator = sampling_generator(params)
        decoder = IncrementalDecoder(self.tokenizer, context)
        matcher = StopMatcher(params.stop)
        cache = self._cache(len(context) + steps)
        logits = self._forward(context, 0, cache)
        for produced in range(1, steps + 1):
            token = sample(logits, params, generator)
            finish: str | None
            if token in self.eos_ids:
                text, finish = matcher.feed_final(decoder.flush()), FINISH_STOP
            else:
                text, stopped = matcher.feed(decoder.push(token))
                finish = FINISH_STOP if stopped else None
                if finish is None and produced == steps:
                    text += matcher.feed_final(decoder.flush())
                    finish = FINISH_LENGTH
            yield GeneratedPiece(text, [token], finish, len(prompt_ids), produced)
            if finish is not None:
                return
            logits = self._forward([token], len(context) + produced - 1, cache)

    def _context(self, ids: list[int], max_tokens: int) -> list[int]:
        """The prompt ids the model sees: all of them unless they leave no room to generate."""
        limit = self.spec.max_position_embeddings
        if len(ids) < limit:
            return ids
        room = max(1, min(max_tokens, limit // 2))  # limit >= 2, so at least one token stays
        return ids[-(limit - room) :]

    @torch.inference_mode()
    def _cache(self, length: int) -> KVCache:
        # Created in inference mode, like every forward that writes to it.
        return KVCache.for_model(self.model, 1, length)

    @torch.inference_mode()
    def _forward(self, ids: list[int], start: int, cache: KVCache) -> torch.Tensor:
        """Next-token logits (fp32, CPU) after ``ids`` at positions ``start``.., through ``cache``.

        Logits go to the CPU so sampling, and so a seed, gives the same tokens on any device.
        Inference mode is entered per step, not around the generator, so it never leaks into
        the consumer's code between yields.
        """
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device)
        with sdpa_kernel(DECODE_SDPA_BACKENDS):
            logits = self.model(tokens, positions=positions, kv_cache=cache)
        return logits[0, -1].float().cpu()


def served_architecture(directory: str | os.PathLike[str]) -> str:
    """The architecture config.json names, if this runner serves it; else ValueError saying why."""
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable config: {exc}") from None
    names = config.get("architectures") if isinstance(config, dict) else None
    if names is None:
        return SERVED_ARCHITECTURES[0]  # optional in HF configs; model_type is checked on load
    served = [n for n in names if n in SERVED_ARCHITECTURES] if isinstance(names, list) else []
    if not served:
        raise ValueError(f"the torch engine cannot serve architecture {names!r}; it serves "
                         f"{', '.join(SERVED_ARCHITECTURES)}")
    return str(served[0])
