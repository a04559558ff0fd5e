"""A Llama-architecture decoder whose weights are exactly Hugging Face ``LlamaForCausalLM``'s.

Parameter names, shapes and numerics (RMSNorm in float32, rotate-half rotary embeddings, SwiGLU,
grouped-query attention) match ``transformers``, so a state dict moves between the two unchanged
and ``ml/hf.py`` reads and writes standard HF model directories. The training forward is one
causal SDPA call per layer with no data-dependent Python control flow, so ``torch.compile`` traces
it whole; a preallocated ``KVCache`` serves small one-sequence generation (``generate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pylon_services.ml.presets import PRESETS

_SUPPORTED_MODEL_TYPES = ("llama", "mistral")  # mistral only without a sliding window


@dataclass(frozen=True)
class LlamaSpec:
    """Shape and numerics of a Llama model; frozen so a spec read from a checkpoint cannot drift."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LlamaSpec.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"LlamaSpec.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"LlamaSpec.num_attention_heads ({self.num_attention_heads}) must be "
                             f"divisible by num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaSpec.head_dim ({self.head_dim}) must be even for rotary")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"LlamaSpec.{name} must be a positive number, got {value!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value < self.vocab_size):
                raise ValueError(f"LlamaSpec.{name} must be None or a token id below vocab_size "
                                 f"{self.vocab_size}, got {value!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def to_hf_config(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The ``config.json`` of the equivalent ``LlamaForCausalLM``.

        RoPE is written both the transformers-5 way (``rope_parameters``) and the older way
        (``rope_theta`` + ``rope_scaling``), and the dtype as both ``dtype`` and ``torch_dtype``,
        so older readers such as vLLM on transformers 4 load the same directory.
        """
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": float(self.rope_theta),
            "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": float(self.rope_theta)},
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": None,
            "use_cache": True,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> LlamaSpec:
        """The spec of an HF Llama ``config.json``; ValueError names any field we do not support.

        Missing optional fields take transformers' LlamaConfig defaults, so a config loads here
        exactly as it does there. A list ``eos_token_id`` keeps its first id (``hf.eos_token_ids``
        reads them all).
        """
        _check_supported(config)
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            values: dict[str, Any] = {
                name: config[name] for name in ("vocab_size", "hidden_size", "intermediate_size",
                                                 "num_hidden_layers", "num_attention_heads")
            }
        except KeyError as exc:
            raise ValueError(f"config.json lacks the field {exc.args[0]!r}") from None
        values["num_key_value_heads"] = config.get("num_key_value_heads") or heads
        values["max_position_embeddings"] = config.get("max_position_embeddings", 2048)
        values["rms_norm_eps"] = float(config.get("rms_norm_eps", 1e-6))
        values["rope_theta"] = float(_rope_theta(config))
        values["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", False))
        values["initializer_range"] = float(config.get("initializer_range", 0.02))
        for name in ("bos_token_id", "eos_token_id"):
            token = config.get(name)
            if isinstance(token, list):
                token = token[0] if token else None
            values[name] = token
        head_dim = config.get("head_dim")
        if head_dim is not None and int(head_dim) != hidden // heads:
            raise ValueError(f"unsupported head_dim {head_dim}: must be hidden_size / "
                             f"num_attention_heads ({hidden // heads})")
        return cls(**values)

    def num_params(self) -> int:
        """Exact parameter count of ``Llama(self)``; a tied embedding is counted once."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, \
            self.num_key_value_heads * self.head_dim
        per_layer = 2 * h * q + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * per_layer + h

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) for MFU, the PaLM / nanoGPT convention.

        ``6 * N + 12 * L * H * Q * T`` with L layers, H query heads of width Q, context T, and N
        every weight used in a matmul: all parameters but the input embedding table, with the
        output projection counted even when it is tied to that table (its matmul still runs).
        The attention term counts the full T x T score matrix, as the convention does.
        """
        n = self.num_params() + (self.vocab_size * self.hidden_size
                                 if self.tie_word_embeddings else 0)
        n -= self.vocab_size * self.hidden_size  # the embedding lookup does no matmul
        attention = 12 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * seq_len
        return float(6 * n + attention)


def _check_supported(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first field whose value this implementation cannot match."""
    model_type = config.get("model_type", "llama")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r}; expected 'llama'")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {config['hidden_act']!r}; only 'silu'")
    for name in ("attention_bias", "mlp_bias"):
        if config.get(name):
            raise ValueError(f"unsupported {name}: true (only bias-free projections)")
    for name in ("sliding_window", "use_sliding_window", "quantization_config"):
        if config.get(name):
            raise ValueError(f"unsupported {name} {config[name]!r}")
    scaling = config.get("rope_scaling")
    if scaling is not None and _rope_type(scaling) != "default":
        raise ValueError(f"unsupported rope_scaling {scaling!r}; only none")
    parameters = config.get("rope_parameters")
    if parameters is not None and _rope_type(parameters) != "default":
        raise ValueError(f"unsupported rope_parameters {parameters!r}; only rope_type 'default'")


def _rope_type(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    return value.get("rope_type", value.get("type", "default"))


def _rope_theta(config: Mapping[str, Any]) -> Any:
    if config.get("rope_theta") is not None:
        return config["rope_theta"]
    parameters = config.get("rope_parameters")
    if isinstance(parameters, Mapping) and parameters.get("rope_theta") is not None:
        return parameters["rope_theta"]
    return 10000.0


def preset(name: str, vocab_size: int, **overrides: Any) -> LlamaSpec:
    """The spec of preset ``name`` for a tokenizer of ``vocab_size``, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(LlamaSpec)} - {"vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown LlamaSpec field(s): {', '.join(unknown)}")
    return LlamaSpec(vocab_size=vocab_size, **{**PRESETS[name], **overrides})


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 and cast back, as HF's LlamaRMSNorm does."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize the last dimension of ``x``."""
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class KVCache:
    """Preallocated keys and values for every layer: (batch, kv_heads, max_len, head_dim) each.

    ``forward`` writes new keys at the given ``positions`` and attends over the whole buffer with
    a mask that hides positions after each query, so shapes never depend on the data.
    """

    def __init__(self, spec: LlamaSpec, batch_size: int, max_len: int, *,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if batch_size < 1 or not 1 <= max_len <= spec.max_position_embeddings:
            raise ValueError(f"KVCache needs batch_size >= 1 and 1 <= max_len <= "
                             f"{spec.max_position_embeddings}, got {batch_size}, {max_len}")
        shape = (batch_size, spec.num_key_value_heads, max_len, spec.head_dim)
        self.max_len = max_len
        self.keys = [torch.zeros(shape, device=device, dtype=dtype)
                     for _ in range(spec.num_hidden_layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.slots = torch.arange(max_len, device=device)

    @classmethod
    def for_model(cls, model: Llama, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache on the model's device, in its parameters' dtype, up to its context length."""
        weight = model.model.embed_tokens.weight
        return cls(model.spec, batch_size, max_len or model.spec.max_position_embeddings,
                   device=weight.device, dtype=weight.dtype)

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (B, kv_heads, T, D) at ``positions`` (B, T); return the full buffers."""
        index = positions[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))
        self.keys[layer].scatter_(2, index, k.to(self.keys[layer].dtype))
        self.values[layer].scatter_(2, index, v.to(self.values[layer].dtype))
        return self.keys[layer], self.values[layer]

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, T, max_len) mask: a query at position p sees cached slots 0..p."""
        return self.slots[None, None, None, :] <= positions[:, None, :, None]


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions, HF Llama's projections and names."""

    def __init__(self, spec: LlamaSpec, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = (
            spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim)
        h = spec.hidden_size
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: KVCache | None, positions: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Attend (B, T, C) activations causally, through ``kv_cache`` when one is given."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        gqa = self.kv_heads != self.heads
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            assert positions is not None  # forward checks; narrows the type
            k, v = kv_cache.update(self.layer, positions, k, v)
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                               enable_gqa=gqa)
        out: torch.Tensor = self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
        return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class MLP(nn.Module):
    """SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, T, C) activations."""
        out: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, spec: LlamaSpec, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(spec, layer)
        self.mlp = MLP(spec)
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: KVCache | None, positions: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Run the block on (B, T, C) activations."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, positions, mask)
        out: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class LlamaBody(nn.Module):
    """Embeddings, decoder layers and final norm: HF's ``model.`` prefix, plus the RoPE tables."""

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.num_hidden_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        # Tables derived from the spec: not weights, so kept out of the state dict.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)


class Llama(nn.Module):
    """Llama decoder with HF ``LlamaForCausalLM`` parameter names; see the module docstring.

    With tied embeddings there is no ``lm_head`` module: the logits reuse
    ``model.embed_tokens.weight``, so the state dict lacks ``lm_head.weight`` as HF files do.
    """

    def __init__(self, spec: LlamaSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = LlamaBody(spec)
        self.lm_head: nn.Linear | None = (
            None if spec.tie_word_embeddings
            else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False))
        self.reset_parameters()

    def init_rope(self) -> None:
        """(Re)compute the RoPE cos/sin tables in float32 on the embedding's device, as HF does.

        Needed after ``to_empty`` (meta-device construction), which leaves buffers uninitialized.
        """
        spec, device = self.spec, self.model.embed_tokens.weight.device
        if device.type == "meta":
            self.model.rope_cos = torch.empty(spec.max_position_embeddings, spec.head_dim,
                                              device=device)
            self.model.rope_sin = torch.empty_like(self.model.rope_cos)
            return
        steps = torch.arange(0, spec.head_dim, 2, dtype=torch.int64, device=device).float()
        inv_freq = 1.0 / (spec.rope_theta ** (steps / spec.head_dim))
        t = torch.arange(spec.max_position_embeddings, dtype=torch.int64, device=device).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.model.rope_cos, self.model.rope_sin = emb.cos(), emb.sin()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """HF's init: normal(0, initializer_range) weights, unit norms; deterministic per generator."""
        std = self.spec.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                if module.weight.device.type != "meta":
                    nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        self.init_rope()

    def forward(self, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for ``input_ids`` (B, T), in the compute dtype.

        ``positions`` (T,) or (B, T) are the tokens' absolute positions (default 0..T-1); with a
        ``kv_cache`` they are required and say where the new keys go, and each token attends to
        every cached slot up to its own position.
        """
        b, t = input_ids.shape
        if t > self.spec.max_position_embeddings:
            raise ValueError(f"{t} tokens exceed max_position_embeddings "
                             f"{self.spec.max_position_embeddings}")
        mask = None
        if positions is None:
            if kv_cache is not None:
                raise ValueError("forward with a kv_cache needs positions")
            cos, sin = self.model.rope_cos[:t], self.model.rope_sin[:t]
        else:
            positions = positions.expand(b, t)
            cos, sin = self.model.rope_cos[positions][:, None], self.model.rope_sin[positions][:, None]
            if kv_cache is not None:
                mask = kv_cache.mask(positions)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, kv_cache, positions, mask)
        x = self.model.norm(x)
        if self.lm_head is None:
            return F.linear(x, self.model.embed_tokens.weight)
        logits: torch.Tensor = self.lm_head(x)
        return logits


@torch.no_grad()
def generate(model: Llama, input_ids: list[int], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             eos_token_id: int | None = None,
             generator: torch.Generator | None = None) -> list[int]:
    """The new tokens generated after ``input_ids`` (the eos token included when it is reached).

    One sequence: a prefill through a ``KVCache``, then one token per step. Greedy when
    ``temperature`` is 0, else sampled from the top-k / nucleus-filtered distribution with
    ``generator`` (on the model's device). Generation also stops at the context length.
    """
    if not input_ids:
        raise ValueError("generate needs at least one prompt token")
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1 or max_new_tokens < 0:
        raise ValueError("generate needs temperature >= 0, top_k >= 0, 0 < top_p <= 1, "
                         "max_new_tokens >= 0")
    limit = model.spec.max_position_embeddings
    if len(input_ids) >= limit:
        raise ValueError(f"prompt of {len(input_ids)} tokens leaves no room in context {limit}")
    steps = min(max_new_tokens, limit - len(input_ids))
    if steps == 0:
        return []
    device = model.model.embed_tokens.weight.device
    cache = KVCache.for_model(model, 1, len(input_ids) + steps)
    tokens = torch.tensor([input_ids], device=device)
    positions = torch.arange(len(input_ids), device=device)
    out: list[int] = []
    while True:
        logits = model(tokens, positions=positions, kv_cache=cache)[0, -1].float()
        token = _pick(logits, temperature, top_k, top_p, generator)
        out.append(token)
        if token == eos_token_id or len(out) == steps:
            return out
        tokens = torch.tensor([[token]], device=device)
        positions = positions[-1:] + 1


def _pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
          generator: torch.Generator | None) -> int:
    """Greedy argmax at temperature 0; else a sample after top-k and top-p filtering."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the ones before it already reach top_p; the first always stays.
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))
