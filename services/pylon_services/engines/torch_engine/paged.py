"""The paged KV cache's tensors and the attention that reads them, run inside Hugging Face's own
model code.

The model is ``transformers``' implementation of its architecture (Llama, Mistral, Qwen2, GPT-2
and the like), loaded with ``attn_implementation="pylon_paged"``: every attention layer hands its
queries, keys and values to ``paged_attention`` below, which writes the new keys and values into
the preallocated block pool and attends over each sequence's blocks. So one forward pass
computes a whole step of many sequences packed into one row of tokens, prefill chunks and
decodes alike, and the weights' numerics are transformers' own.

Attention per step: the decoding sequences (one new token each) go in one batched call over
their gathered blocks with a padding mask; a prefill chunk with no cached context attends to
itself causally without touching the pool; a chunk after cached tokens (a later chunk, a prefix
hit) gathers its context and uses an offset causal mask. Gathers copy whole blocks through the
sequences' block tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers import AttentionInterface

from pylon_services.engines.torch_engine.scheduler import Chunk

ATTN_IMPLEMENTATION = "pylon_paged"


class KVCache:
    """``num_blocks`` blocks of ``block_size`` slots for every layer's keys and values."""

    def __init__(self, layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (num_blocks * block_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.block_size = block_size

    @staticmethod
    def bytes_per_block(layers: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * block_size * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class PrefillPart:
    """A chunk of more than one token: its rows in the packed step and, when it continues
    cached tokens, its context's blocks and mask."""

    start: int
    count: int
    context_blocks: torch.Tensor | None  # [n] the blocks holding positions 0 .. start + count
    context_len: int
    mask: torch.Tensor | None


@dataclass
class StepMetadata:
    """Where a step's tokens go and what each attends to (built once, read by every layer)."""

    cache: KVCache
    slots: torch.Tensor  # [T] the slot each new token's key and value go to
    decode_rows: torch.Tensor | None  # [B] rows of the single-token sequences
    decode_blocks: torch.Tensor | None  # [B, N] their block tables (padded)
    decode_mask: torch.Tensor | None  # [B, 1, 1, N * block_size] True where a slot is real
    prefills: list[PrefillPart]


def slot_of(chunk_blocks: list[int], position: int, block_size: int) -> int:
    return chunk_blocks[position // block_size] * block_size + position % block_size


def build_step(chunks: list[Chunk], cache: KVCache, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, StepMetadata, torch.Tensor]:
    """Packed input ids and positions, the attention metadata, and the rows whose logits sample."""
    bs = cache.block_size
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    decodes: list[tuple[int, list[int], int]] = []
    prefills: list[PrefillPart] = []
    sample_rows: list[int] = []
    for chunk in chunks:
        seq, row = chunk.seq, len(ids)
        span = range(chunk.start, chunk.start + chunk.count)
        ids += seq.tokens[chunk.start:chunk.start + chunk.count]
        positions += span
        slots += [slot_of(seq.blocks, p, bs) for p in span]
        end = chunk.start + chunk.count
        used = seq.blocks[:(end + bs - 1) // bs]
        if chunk.count == 1:
            decodes.append((row, used, end))
        elif chunk.start == 0:
            prefills.append(PrefillPart(row, chunk.count, None, 0, None))
        else:
            # Query i (position start + i) sees keys 0 .. start + i.
            mask = torch.arange(end, device=device)[None, :] <= torch.arange(chunk.start, end, device=device)[:, None]
            prefills.append(PrefillPart(row, chunk.count, torch.tensor(used, device=device), end, mask))
        if chunk.samples:
            sample_rows.append(row + chunk.count - 1)
    meta = StepMetadata(cache, torch.tensor(slots, dtype=torch.long, device=device), None, None, None, prefills)
    if decodes:
        widest = max(len(b) for _, b, _ in decodes)
        table = torch.tensor([b + [0] * (widest - len(b)) for _, b, _ in decodes], dtype=torch.long, device=device)
        lengths = torch.tensor([n for _, _, n in decodes], device=device)
        meta.decode_rows = torch.tensor([r for r, _, _ in decodes], device=device)
        meta.decode_blocks = table
        meta.decode_mask = (torch.arange(widest * bs, device=device)[None, :] < lengths[:, None])[:, None, None, :]
    return (torch.tensor(ids, dtype=torch.long, device=device)[None],
            torch.tensor(positions, dtype=torch.long, device=device)[None], meta,
            torch.tensor(sample_rows, dtype=torch.long, device=device))


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """The keys (or values) of ``blocks`` [..., N] as [..., N * block_size, KVH, D]: whole blocks
    copied with ``index_select`` (about twice as fast as indexing slot by slot on CPU)."""
    per_block = cache.view(-1, block_size * cache.shape[1] * cache.shape[2])
    rows = per_block.index_select(0, blocks.reshape(-1))
    return rows.view(*blocks.shape[:-1], blocks.shape[-1] * block_size, cache.shape[1], cache.shape[2])


def paged_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    pylon_step: StepMetadata | None = None, **_: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention hook: query [1, H, T, D], key and value [1, KVH, T, D] of the
    packed step; returns [1, T, H, D]."""
    if pylon_step is None:
        raise RuntimeError("pylon_paged attention runs only inside the torch engine's steps")
    meta, layer = pylon_step, int(module.layer_idx)  # type: ignore[arg-type]
    k_cache, v_cache, bs = meta.cache.k[layer], meta.cache.v[layer], meta.cache.block_size
    k_new, v_new = key[0].transpose(0, 1), value[0].transpose(0, 1)  # [T, KVH, D]
    k_cache.index_copy_(0, meta.slots, k_new)
    v_cache.index_copy_(0, meta.slots, v_new)
    q = query[0].transpose(0, 1)  # [T, H, D]
    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        assert meta.decode_blocks is not None and meta.decode_mask is not None
        kd = gather_blocks(k_cache, meta.decode_blocks, bs).transpose(1, 2)  # [B, KVH, L, D]
        vd = gather_blocks(v_cache, meta.decode_blocks, bs).transpose(1, 2)
        qd = q[meta.decode_rows].unsqueeze(2)  # [B, H, 1, D]
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scaling, enable_gqa=True)
        out[meta.decode_rows] = o.squeeze(2)
    for part in meta.prefills:
        rows = slice(part.start, part.start + part.count)
        qp = q[rows].transpose(0, 1)[None]  # [1, H, n, D]
        if part.context_blocks is None:
            kp, vp = k_new[rows].transpose(0, 1)[None], v_new[rows].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scaling, enable_gqa=True)
        else:
            n = part.context_len
            kp = gather_blocks(k_cache, part.context_blocks, bs)[:n].transpose(0, 1)[None]
            vp = gather_blocks(v_cache, part.context_blocks, bs)[:n].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=part.mask, scale=scaling, enable_gqa=True)
        out[rows] = o[0].transpose(0, 1)
    return out[None], None


AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
