"""The torch engine's settings, a deployment's ``engine_config`` (torch-free: the API checks a
deployment's settings against these rules before any replica starts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pylon_services.common.errors import FieldViolation
from pylon_services.engines.contract import invalid
from pylon_services.engines.queue_limits import QUEUE_SETTINGS, queue_violations

MAX_KV_CACHE_BYTES = 1 << 40
_POSITIVE = ("block_size", "kv_cache_memory_bytes", "max_num_seqs", "max_num_batched_tokens")


@dataclass(frozen=True)
class TorchEngineConfig:
    """vLLM's names where it has one. ``kv_cache_memory_bytes`` is the whole paged KV pool,
    preallocated at start: admission, chunking and preemption keep every request inside it.
    ``max_num_batched_tokens`` is the per-step token budget chunked prefill shares with decodes.
    ``onednn_linear`` runs a CPU fp32 model's linear layers through oneDNN with prepacked weights
    (``onednn.py``); false keeps transformers' ``nn.Linear``."""

    device: str = "auto"
    dtype: str = "auto"  # float32 on CPU, bfloat16 on CUDA
    block_size: int = 16
    kv_cache_memory_bytes: int = 256 << 20
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 0  # 0: the model's own context
    enable_prefix_caching: bool = True
    onednn_linear: bool = True

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TorchEngineConfig:
        """Settings from an ``engine_config`` without the replica's queue settings."""
        bad = config_violations(config)
        if bad:
            raise invalid([FieldViolation(f"engine_config.{k}", d) for k, d in bad])
        return cls(**{k: v for k, v in config.items() if k not in QUEUE_SETTINGS})


def config_violations(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, rule) for each bad setting of a torch engine's ``engine_config``."""
    known = [f.name for f in fields(TorchEngineConfig)] + list(QUEUE_SETTINGS)
    bad = [(k, f"unknown setting; the torch engine takes {', '.join(known)}") for k in config if k not in known]
    bad += queue_violations(config)
    for name in _POSITIVE:
        v = config.get(name, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            bad.append((name, "must be a positive integer"))
    v = config.get("max_model_len", 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        bad.append(("max_model_len", "must be 0 (the model's context) or a positive integer"))
    if isinstance(config.get("kv_cache_memory_bytes"), int) and config["kv_cache_memory_bytes"] > MAX_KV_CACHE_BYTES:
        bad.append(("kv_cache_memory_bytes", "must be at most 1 TiB"))
    if config.get("block_size", 16) not in (1, 2, 4, 8, 16, 32, 64, 128):
        bad.append(("block_size", "must be a power of two up to 128"))
    if config.get("dtype", "auto") not in ("auto", "float32", "bfloat16", "float16"):
        bad.append(("dtype", "must be auto, float32, bfloat16 or float16"))
    device = config.get("device", "auto")
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        bad.append(("device", "must be auto, cpu, cuda or cuda:N"))
    for name in ("enable_prefix_caching", "onednn_linear"):
        if not isinstance(config.get(name, True), bool):
            bad.append((name, "must be true or false"))
    return bad
