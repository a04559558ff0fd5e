"""Choosing the next token of every sequence in a step, batched over rows with per-row settings.

Order of operations (vLLM's): penalties on the raw logits (repetition, then presence and
frequency), then greedy rows take the argmax; the others divide by their temperature, keep the
top-k, the top-p nucleus and the tokens above ``min_p`` times the most likely one's probability,
and draw from what is left with their own generator, so a seeded completion gets the same tokens
whatever else shares the batch. Log-probabilities are the model's own (before any of this), as
vLLM reports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pylon_services.engines.contract import SamplingOptions, TokenLogprob


@dataclass
class SamplingRow:
    """What the sampler needs of one sequence."""

    options: SamplingOptions
    generator: torch.Generator
    prompt_ids: Sequence[int]
    output_ids: list[int]  # appended to as the completion grows


def new_generator(seed: int | None, index: int) -> torch.Generator:
    """A CPU generator for completion ``index`` of a request: seeded when asked, else random."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(hash((seed, index)) & ((1 << 63) - 1))
    return generator


def sample(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> tuple[list[int], list[TokenLogprob | None]]:
    """The next token of each row of ``logits`` ([rows, vocab]) and its log-probabilities."""
    logits = logits.float()
    raw = logits
    if any(r.options.logprobs is not None for r in rows):
        raw = torch.log_softmax(logits, dim=-1)
    logits = _penalized(logits, rows)
    tokens = [0] * len(rows)
    greedy = [i for i, r in enumerate(rows) if r.options.temperature == 0.0]
    if greedy:
        for i, t in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
            tokens[i] = t
    sampled = [i for i, r in enumerate(rows) if r.options.temperature != 0.0]
    if sampled:
        probs = _filtered_probs(logits[sampled], [rows[i].options for i in sampled])
        for j, i in enumerate(sampled):
            # The exponential race (argmax of p / E) draws from p; one draw per row from its own generator.
            noise = torch.empty_like(probs[j]).exponential_(generator=rows[i].generator)
            tokens[i] = int(torch.argmax(probs[j] / noise))
    return tokens, [_logprobs(raw[i], tokens[i], r.options.logprobs) for i, r in enumerate(rows)]


def _penalized(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    out = logits
    for i, r in enumerate(rows):
        o = r.options
        if o.repetition_penalty != 1.0 and (r.prompt_ids or r.output_ids):
            if out is logits:
                out = logits.clone()
            seen = torch.tensor(sorted({*r.prompt_ids, *r.output_ids}), dtype=torch.long)
            picked = out[i, seen]
            out[i, seen] = torch.where(picked > 0, picked / o.repetition_penalty, picked * o.repetition_penalty)
        if (o.presence_penalty or o.frequency_penalty) and r.output_ids:
            if out is logits:
                out = logits.clone()
            counts = torch.bincount(torch.tensor(r.output_ids, dtype=torch.long), minlength=out.shape[1])
            out[i] -= o.frequency_penalty * counts[: out.shape[1]] + o.presence_penalty * (counts[: out.shape[1]] > 0)
    return out


def _filtered_probs(logits: torch.Tensor, options: Sequence[SamplingOptions]) -> torch.Tensor:
    """Each row's distribution after temperature, top-k, top-p and min-p."""
    vocab = logits.shape[1]
    temps = torch.tensor([o.temperature for o in options], dtype=logits.dtype).unsqueeze(1)
    scores = logits / temps
    if any(0 < o.top_k < vocab or o.top_p < 1.0 for o in options):
        ranked, order = torch.sort(scores, dim=-1, descending=True)
        keep_k = torch.tensor([o.top_k if 0 < o.top_k < vocab else vocab for o in options]).unsqueeze(1)
        drop = torch.arange(vocab).unsqueeze(0) >= keep_k
        probs = torch.softmax(ranked.masked_fill(drop, -torch.inf), dim=-1)
        top_p = torch.tensor([o.top_p for o in options], dtype=probs.dtype).unsqueeze(1)
        # A token goes when the tokens ranked above it already cover top_p; the top one stays.
        drop |= (torch.cumsum(probs, dim=-1) - probs) >= top_p
        scores = torch.full_like(scores, -torch.inf).scatter(1, order, ranked.masked_fill(drop, -torch.inf))
    probs = torch.softmax(scores, dim=-1)
    min_p = torch.tensor([o.min_p for o in options], dtype=probs.dtype).unsqueeze(1)
    if bool((min_p > 0).any()):
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs


def _logprobs(raw: torch.Tensor, token: int, k: int | None) -> TokenLogprob | None:
    if k is None:
        return None
    top: tuple[tuple[int, float], ...] = ()
    if k:
        values, ids = torch.topk(raw, k)
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(raw[token]), top)
