"""Settings of the ``causal-lm`` trainer (a Llama-architecture model on ingest's BPE token
shards), checked without torch.

The API checks a job's trainer config at submit through the workload registry, so this module
imports nothing heavy. ``config_violations`` names every bad field at once; ``resolve`` gives a
valid config with every default filled in and the preset's architecture merged with the
``model`` overrides, which is what the trainer builds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from pylon_services.ml.presets import PRESETS

# Every field with its default; ``model`` holds overrides of the preset's architecture.
DEFAULTS: dict[str, Any] = {
    "preset": "tiny", "model": {}, "seq_len": 256, "batch_size": 8, "grad_accum": 1, "steps": 1000,
    "lr": 3e-4, "min_lr_ratio": 0.1, "warmup": 0, "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 0,
    "eval_batches": 8, "eval_fraction": 0.01, "log_every": 10, "seed": 0, "dtype": "auto", "compile": "auto",
    "device": "auto", "checkpoint_every_minutes": 0.0, "keep_checkpoints": 3, "tokenizer": "",
    "max_new_tokens_sample": 0,
}

MAX_SEQ_LEN = 32768
MAX_POSITIONS = 1 << 20
MAX_DIM = 1 << 16  # hidden and intermediate sizes
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_CHECKPOINT_MINUTES = 7 * 24 * 60.0
_ID = re.compile(r"[a-z][a-z0-9_.-]{0,62}")

Check = Callable[[Any], str]  # "" when the value is fine, else why not


def _int(low: int, high: int) -> Check:
    def check(v: Any) -> str:
        ok = isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
        return "" if ok else f"must be an integer between {low} and {high}"
    return check


def _number(low: float, high: float, *, open_low: bool = False) -> Check:
    def check(v: Any) -> str:
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (low < v if open_low else low <= v) and v <= high)
        return "" if ok else f"must be a number {'>' if open_low else '>='} {low:g} and <= {high:g}"
    return check


def _choice(*values: Any) -> Check:
    def check(v: Any) -> str:
        ok = any(v is c if isinstance(c, bool) else (isinstance(v, str) and v == c) for c in values)
        return "" if ok else "must be one of " + ", ".join(repr(c) if isinstance(c, str) else str(c).lower()
                                                          for c in values)
    return check


def _tokenizer_id(v: Any) -> str:
    ok = isinstance(v, str) and (v == "" or _ID.fullmatch(v) is not None)
    return "" if ok else "must be a tokenizer id (1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter)"


_FIELDS: dict[str, Check] = {
    "preset": _choice(*PRESETS), "seq_len": _int(8, MAX_SEQ_LEN), "batch_size": _int(1, 4096),
    "grad_accum": _int(1, 1024), "steps": _int(1, 10**9), "lr": _number(0, 1, open_low=True),
    "min_lr_ratio": _number(0, 1), "warmup": _int(0, 10**9), "weight_decay": _number(0, 1),
    "grad_clip": _number(0, 1e9), "eval_every": _int(0, 10**9), "eval_batches": _int(1, 1000),
    "eval_fraction": _number(0, 0.5), "log_every": _int(1, 10**9), "seed": _int(0, 2**63 - 1),
    "dtype": _choice("auto", "float32", "bfloat16"), "compile": _choice("auto", True, False),
    "device": _choice("auto", "cpu", "cuda"), "checkpoint_every_minutes": _number(0, MAX_CHECKPOINT_MINUTES),
    "keep_checkpoints": _int(1, 100), "tokenizer": _tokenizer_id, "max_new_tokens_sample": _int(0, 512),
}
_MODEL_FIELDS: dict[str, Check] = {
    "hidden_size": _int(1, MAX_DIM), "intermediate_size": _int(1, 4 * MAX_DIM),
    "num_hidden_layers": _int(1, MAX_LAYERS), "num_attention_heads": _int(1, MAX_HEADS),
    "num_key_value_heads": _int(1, MAX_HEADS), "max_position_embeddings": _int(8, MAX_POSITIONS),
    "rope_theta": _number(0, 1e12, open_low=True), "tie_word_embeddings": _choice(True, False),
}


def config_violations(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem of a causal-lm config as ``(field, description)``; [] when it is valid. A
    rule between fields is checked whenever each field it involves is itself valid."""
    if not isinstance(config, Mapping):
        return [("config", "must be a mapping of field -> value")]
    bad = [(k, "unknown field") for k in sorted(set(config) - set(_FIELDS) - {"model"})]
    bad += [(k, why) for k, check in _FIELDS.items() if k in config and (why := check(config[k]))]
    model = config.get("model", {})
    if not isinstance(model, Mapping):
        return [*bad, ("model", "must be a mapping of architecture overrides")]
    bad += [(f"model.{k}", "unknown field") for k in sorted(set(model) - set(_MODEL_FIELDS))]
    bad += [(f"model.{k}", why) for k, check in _MODEL_FIELDS.items() if k in model and (why := check(model[k]))]
    broken = {f for f, _ in bad}
    if "preset" in broken:  # the architecture it names is unknown: no rule about it can be checked
        broken |= {f"model.{k}" for k in _MODEL_FIELDS}
    valid = {k: v for k, v in config.items() if k in _FIELDS and k not in broken}
    valid["model"] = {k: v for k, v in model.items() if k in _MODEL_FIELDS and f"model.{k}" not in broken}
    return bad + [(f, why) for involved, f, why in _relations(resolve(valid)) if not involved & broken]


def _relations(cfg: Mapping[str, Any]) -> list[tuple[set[str], str, str]]:
    """The rules between fields that ``cfg`` breaks: (the fields involved, the field to blame, why)."""
    bad = []
    m = cfg["model"]
    hidden, heads, kv = m["hidden_size"], m["num_attention_heads"], m["num_key_value_heads"]
    if hidden % heads:
        bad.append(({"model.hidden_size", "model.num_attention_heads"}, "model.hidden_size",
                    f"must be divisible by num_attention_heads ({heads})"))
    elif (hidden // heads) % 2:
        bad.append(({"model.hidden_size", "model.num_attention_heads"}, "model.hidden_size",
                    "hidden_size / num_attention_heads must be even (rotary embeddings)"))
    if heads % kv:
        bad.append(({"model.num_attention_heads", "model.num_key_value_heads"}, "model.num_attention_heads",
                    f"must be divisible by num_key_value_heads ({kv})"))
    if cfg["seq_len"] > m["max_position_embeddings"]:
        bad.append(({"seq_len", "model.max_position_embeddings"}, "seq_len",
                    f"must be at most max_position_embeddings ({m['max_position_embeddings']})"))
    if cfg["warmup"] > cfg["steps"]:
        bad.append(({"warmup", "steps"}, "warmup", f"must be at most steps ({cfg['steps']})"))
    if cfg["eval_every"] and cfg["eval_fraction"] == 0:
        bad.append(({"eval_every", "eval_fraction"}, "eval_fraction",
                    "must be > 0 when eval_every is set (nothing is held out to evaluate on)"))
    return bad


def resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every default filled in and ``model`` the full architecture (the preset's,
    overridden field by field). Call it on a config ``config_violations`` accepted."""
    out = {**DEFAULTS, **config}
    out["model"] = {**PRESETS[out["preset"]], **dict(config.get("model") or {})}
    return out
