"""A deployment's ``engine_config`` for the vLLM backend: which keys map onto vLLM's engine
arguments, and the rules each value must meet (vLLM-free, so a config is checked before any load).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pylon_services.common.errors import FieldViolation
from pylon_services.engines.contract import MAX_LOGPROBS, invalid

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class _Key:
    kind: type
    rule: str
    ok: Callable[[Any], bool]


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1


# Each key is an ``AsyncEngineArgs`` field of the same name. Keys vLLM has no field for (its old
# ``swap_space``: vLLM's v1 engine recomputes preempted requests instead of swapping) are refused.
CONFIG_KEYS: dict[str, _Key] = {
    "max_model_len": _Key(int, "must be a positive integer (tokens)", _positive_int),
    "max_num_seqs": _Key(int, "must be a positive integer", _positive_int),
    "max_num_batched_tokens": _Key(int, "must be a positive integer", _positive_int),
    "dtype": _Key(str, f"must be one of {', '.join(DTYPES)}", lambda v: v in DTYPES),
    "gpu_memory_utilization": _Key(float, "must be in (0, 1]", _fraction),
    "kv_cache_memory_bytes": _Key(int, "must be a positive integer (bytes)", _positive_int),
    "block_size": _Key(int, "must be a positive integer (tokens per KV block)", _positive_int),
    "enable_prefix_caching": _Key(bool, "must be true or false", lambda v: isinstance(v, bool)),
    "enforce_eager": _Key(bool, "must be true or false", lambda v: isinstance(v, bool)),
    "tensor_parallel_size": _Key(int, "must be a positive integer", _positive_int),
    "seed": _Key(int, "must be a non-negative integer",
                 lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
}


def engine_arguments(model_dir: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``AsyncEngineArgs`` keywords for ``model_dir`` and a deployment's ``engine_config``.

    Raises ``InvalidArgument`` naming ``engine_config.<key>`` for an unknown key or a bad value.
    """
    bad: list[FieldViolation] = []
    for key, value in config.items():
        spec = CONFIG_KEYS.get(key)
        if spec is None:
            bad.append(FieldViolation(f"engine_config.{key}",
                                      f"unknown key for the vLLM engine (known: {', '.join(sorted(CONFIG_KEYS))})"))
        elif not spec.ok(value):
            bad.append(FieldViolation(f"engine_config.{key}", spec.rule))
    if bad:
        raise invalid(bad)
    return {
        "model": model_dir,
        # vLLM refuses more alternatives than this per token; the port allows up to MAX_LOGPROBS.
        "max_logprobs": MAX_LOGPROBS,
        # Our stat logger reads vLLM's stats; vLLM's own periodic log line is not wanted.
        "disable_log_stats": True,
        **{k: (float(v) if CONFIG_KEYS[k].kind is float else v) for k, v in config.items()},
    }

