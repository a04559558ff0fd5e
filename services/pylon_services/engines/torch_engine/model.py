"""Loading a Hugging Face causal-LM directory for the torch engine.

The directory needs ``config.json`` naming an architecture the engine serves, safetensors
weights and ``tokenizer.json``; ``generation_config.json`` and ``tokenizer_config.json`` (its
chat template) are read when present. Anything else fails with ValueError saying what is
missing, which the replica reports as the deployment's failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from pylon_services.engines.torch_engine import onednn
from pylon_services.engines.torch_engine.paged import ATTN_IMPLEMENTATION
from pylon_services.engines.torch_engine.settings import TorchEngineConfig
from pylon_services.ml.device import resolve_device
from pylon_services.ml.hf import CONFIG_FILE, TOKENIZER_CONFIG_FILE, eos_token_ids, load_tokenizer, weight_files

SERVED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel")


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
    if cfg.onednn_linear and device.type == "cpu" and dtype == torch.float32 and onednn.available():
        onednn.use_onednn_linears(model)
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
