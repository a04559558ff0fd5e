"""A tiny decoder-only GPT, its byte-level tokenizer, and device helpers.

The model is small enough to train on a laptop CPU in about a minute, and the same code runs on
a CUDA GPU (bf16 autocast). ``GPT.forward`` takes an optional key/value cache so that a serving
engine can decode one token at a time without recomputing the whole prefix.
"""

from __future__ import annotations

import codecs
import contextlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# One (key, value) pair per layer, each shaped (batch, n_head, time, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT; frozen so that a config read from a checkpoint cannot drift."""

    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        """Build a config from ``to_dict`` output; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(unknown)}")
        return cls(**data)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that can extend a per-layer key/value cache."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend ``x`` (B, T, C) over the cached keys plus its own; return output and new cache."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        past_len = 0
        if past is not None:
            past_len = past[0].size(2)
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        dropout_p = self.dropout if self.training else 0.0
        if past_len == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif t == 1:
            # A single new query may see every cached position: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # SDPA's is_causal aligns the mask top-left; with a cache it must be bottom-right.
            mask = torch.ones(t, past_len + t, dtype=torch.bool, device=x.device)
            mask = mask.tril(diagonal=past_len)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_drop(self.proj(y)), (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward block (4x expansion, GELU)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, T, C) activations."""
        out: torch.Tensor = self.drop(self.proj(F.gelu(self.fc(x))))
        return out


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the block; return activations and this layer's extended cache."""
        attn_out, kv = self.attn(self.ln_1(x), past)
        x = x + attn_out
        return x + self.mlp(self.ln_2(x)), kv


class GPT(nn.Module):
    """Decoder-only transformer with learned positions and input/output embeddings tied."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by depth so the residual stream keeps unit variance.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Count of trainable parameters (the tied embedding is counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        past_kv: KVCache | None = None,
        *,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Logits (B, T, vocab) for token ids ``idx`` (B, T) that follow the cached positions.

        ``past_kv`` is the cache returned by a previous call; the new tokens take the positions
        right after it. Returns the logits and the extended cache (``None`` if ``use_cache`` is
        false, as in training). Raises ValueError when the total length exceeds block_size.
        """
        _, t = idx.shape
        past_len = past_kv[0][0].size(2) if past_kv else 0
        if t == 0 or past_len + t > self.config.block_size:
            raise ValueError(
                f"sequence of {past_len} cached + {t} new tokens does not fit "
                f"block_size {self.config.block_size}"
            )
        pos = torch.arange(past_len, past_len + t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        new_kv: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past_kv[i] if past_kv else None)
            if use_cache:
                new_kv.append(kv)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return logits, (new_kv if use_cache else None)


class ByteTokenizer:
    """Byte-level tokenizer: each UTF-8 byte is one token, so any text round-trips."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as token ids."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 (a model can emit it) becomes U+FFFD."""
        return _ids_to_bytes(ids).decode("utf-8", errors="replace")


class StreamDecoder:
    """Turns a stream of byte tokens into text pieces without splitting a UTF-8 character.

    Bytes of an unfinished multi-byte character are held back until it completes; ``flush``
    releases what is left at the end of the stream (an unfinished character becomes U+FFFD).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: int | Iterable[int]) -> str:
        """Feed one or more token ids; return the text they complete (possibly empty)."""
        data = _ids_to_bytes([ids] if isinstance(ids, int) else ids)
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """End of stream: return any held-back bytes as text and reset."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


def _ids_to_bytes(ids: Iterable[int]) -> bytes:
    try:
        return bytes(ids)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"byte token ids must be integers in [0, 255]: {exc}") from None


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; an explicit device must be available."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use 'auto', 'cpu' or 'cuda[:N]'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} does not exist")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA GPUs that support it; a no-op (fp32) elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
