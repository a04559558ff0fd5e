"""Loading a Hugging Face causal-LM directory for the torch engine, and its settings.

The directory needs ``config.json`` naming an architecture the engine serves, safetensors
weights and ``tokenizer.json``; ``generation_config.json`` and ``tokenizer_config.json`` (its
chat template) are read when present. Anything else fails with ValueError saying what is
missing, which the replica reports as the deployment's failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from pylon_services.common.errors import FieldViolation
from pylon_services.engines.contract import invalid
from pylon_services.engines.torch_engine.paged import ATTN_IMPLEMENTATION
from pylon_services.ml.hf import CONFIG_FILE, TOKENIZER_CONFIG_FILE, eos_token_ids, load_tokenizer, weight_files

SERVED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel")
MAX_KV_CACHE_BYTES = 1 << 40


@dataclass(frozen=True)
class TorchEngineConfig:
    """The torch engine's settings (a deployment's ``engine_config``; vLLM's names where it has one).

    ``kv_cache_memory_bytes`` is the whole paged KV pool, preallocated at start: admission,
    chunking and preemption keep every request inside it. ``max_num_batched_tokens`` is the
    per-step token budget that chunked prefill shares with the decodes.
    """

    device: str = "auto"
    dtype: str = "auto"  # float32 on CPU, bfloat16 on CUDA
    block_size: int = 16
    kv_cache_memory_bytes: int = 256 << 20
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 0  # 0: the model's own context
    enable_prefix_caching: bool = True

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TorchEngineConfig:
        """Settings from a deployment's ``engine_config``; InvalidArgument naming a bad key."""
        known = {f.name: f.type for f in fields(cls)}
        bad = [FieldViolation(f"engine_config.{k}", f"unknown setting; the torch engine takes {', '.join(known)}")
               for k in config if k not in known]
        values = {k: v for k, v in config.items() if k in known}
        for name in ("block_size", "kv_cache_memory_bytes", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            v = values.get(name, 1)
            if isinstance(v, bool) or not isinstance(v, int) or not (0 if name == "max_model_len" else 1) <= v:
                bad.append(FieldViolation(f"engine_config.{name}", "must be a positive integer"))
        if values.get("kv_cache_memory_bytes", 1) > MAX_KV_CACHE_BYTES:
            bad.append(FieldViolation("engine_config.kv_cache_memory_bytes", "must be at most 1 TiB"))
        if values.get("block_size", 16) not in (1, 2, 4, 8, 16, 32, 64, 128):
            bad.append(FieldViolation("engine_config.block_size", "must be a power of two up to 128"))
        if values.get("dtype", "auto") not in ("auto", "float32", "bfloat16", "float16"):
            bad.append(FieldViolation("engine_config.dtype", "must be auto, float32, bfloat16 or float16"))
        if not isinstance(values.get("device", "auto"), str):
            bad.append(FieldViolation("engine_config.device", "must be auto, cpu or cuda[:N]"))
        if not isinstance(values.get("enable_prefix_caching", True), bool):
            bad.append(FieldViolation("engine_config.enable_prefix_caching", "must be true or false"))
        if bad:
            raise invalid(bad)
        return cls(**values)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Tokenizer
    eos_ids: frozenset[int]
    architecture: str
    device: torch.device
    dtype: torch.dtype
    context_len: int
    vocab_size: int
    layers: int
    kv_heads: int
    head_dim: int
    chat_template: str | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def served_architecture(config: Mapping[str, Any], directory: str | os.PathLike[str]) -> str:
    names = config.get("architectures") or []
    served = [n for n in names if n in SERVED_ARCHITECTURES] if isinstance(names, list) else []
    if not served:
        raise ValueError(f"{directory}: the torch engine cannot serve architecture {names or 'unnamed'!r}; "
                         f"it serves {', '.join(SERVED_ARCHITECTURES)}")
    return str(served[0])


def load_model(directory: str | os.PathLike[str], cfg: TorchEngineConfig) -> LoadedModel:
    """The model, tokenizer and shapes of an HF directory; ValueError saying what is wrong."""
    from transformers import AutoModelForCausalLM

    root = Path(directory)
    try:
        config = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{directory}: no readable {CONFIG_FILE}: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{directory}: {CONFIG_FILE} is not a JSON object")
    architecture = served_architecture(config, directory)
    tokenizer = load_tokenizer(root)  # ValueError when tokenizer.json is missing or broken
    weight_files(root)  # ValueError when there are no safetensors weights
    device = resolve_device(cfg.device)
    dtype = _dtype(cfg.dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(root), dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{directory}: transformers cannot load the model: {exc}") from None
    model = model.to(device).eval()  # type: ignore[arg-type]
    c = model.config
    heads = c.num_attention_heads
    window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
    context = min(x for x in (getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None),
                              window) if x)
    template = _chat_template(root)
    return LoadedModel(model, tokenizer, frozenset(eos_token_ids(root)), architecture, device, dtype, int(context),
                       int(c.vocab_size), int(c.num_hidden_layers), int(getattr(c, "num_key_value_heads", None) or heads),
                       int(getattr(c, "head_dim", None) or c.hidden_size // heads), template)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _chat_template(root: Path) -> str | None:
    try:
        template = json.loads((root / TOKENIZER_CONFIG_FILE).read_text()).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    return template if isinstance(template, str) else None
