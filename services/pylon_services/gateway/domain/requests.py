"""What the gateway accepts, as pure checks: a deployment's fields, an engine's JSON settings and a
request's sampling parameters. The API refuses anything else with INVALID_ARGUMENT naming the
field, so no bad value reaches Redis, the scheduler or an engine, and a stored deployment stays
small enough to list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pylon_services.common.errors import FieldViolation, InvalidArgument
from pylon_services.common.limits import json_violations

MAX_GPUS_PER_REPLICA = 64.0
MAX_GPU_TYPES = 16
GPU_TYPE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 16
MAX_PROMPT_BYTES = 64 * 1024
MAX_TOKENS = 4096
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1_000_000
MAX_STOP_STRINGS = 16  # the torch engine's limit too
MAX_STOP_CHARS = 256


def invalid(bad: list[FieldViolation]) -> InvalidArgument:
    """One InvalidArgument for several violations (the message lists the first few)."""
    return InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in bad[:20]), bad[:100])


def resource_violations(gpus: float, gpu_types: Sequence[str]) -> list[FieldViolation]:
    bad = []
    if not (math.isfinite(gpus) and 0 <= gpus <= MAX_GPUS_PER_REPLICA):
        bad.append(FieldViolation("deployment.gpus_per_replica", f"must be a finite number between 0 and "
                                                                 f"{MAX_GPUS_PER_REPLICA:g}"))
    if len(gpu_types) > MAX_GPU_TYPES:
        bad.append(FieldViolation("deployment.gpu_types", f"at most {MAX_GPU_TYPES} entries"))
    else:
        bad += [FieldViolation(f"deployment.gpu_types[{n}]", "must be 1-64 ASCII letters, digits, '.', '_' or '-'")
                for n, t in enumerate(gpu_types) if not GPU_TYPE_RE.fullmatch(t)]
    return bad


def config_violations(path: str, config: Mapping[str, Any]) -> list[FieldViolation]:
    """An engine's JSON settings: finite numbers, at most ``MAX_CONFIG_DEPTH`` levels and about
    ``MAX_CONFIG_BYTES`` (the scheduler checks a replica job's ``engine_config`` the same way)."""
    return json_violations(path, config, max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH)


def sampling_violations(prompt: str, max_tokens: int, temperature: float, top_p: float, top_k: int,
                        stop: Sequence[str], seed: int | None) -> list[FieldViolation]:
    """Generate's inputs, by the engines' rules (0 means the default for max_tokens and top_p)."""
    bad = []
    if not prompt:
        bad.append(FieldViolation("prompt", "must not be empty"))
    elif len(prompt.encode()) > MAX_PROMPT_BYTES:
        bad.append(FieldViolation("prompt", f"must be at most {MAX_PROMPT_BYTES >> 10} KiB"))
    if not 0 <= max_tokens <= MAX_TOKENS:
        bad.append(FieldViolation("sampling.max_tokens", f"must be between 0 (the default) and {MAX_TOKENS}"))
    if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        bad.append(FieldViolation("sampling.temperature", f"must be a finite number between 0 (greedy) and "
                                                          f"{MAX_TEMPERATURE:g}"))
    if not (math.isfinite(top_p) and 0 <= top_p <= 1):
        bad.append(FieldViolation("sampling.top_p", "must be in (0, 1], or 0 for the default (1)"))
    if not 0 <= top_k <= MAX_TOP_K:
        bad.append(FieldViolation("sampling.top_k", f"must be between 0 (off) and {MAX_TOP_K}"))
    if len(stop) > MAX_STOP_STRINGS:
        bad.append(FieldViolation("sampling.stop", f"at most {MAX_STOP_STRINGS} stop strings"))
    elif any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        bad.append(FieldViolation("sampling.stop", f"each stop string must be 1-{MAX_STOP_CHARS} characters"))
    if seed is not None and not 0 <= seed < 2**63:
        bad.append(FieldViolation("sampling.seed", "must be in [0, 2**63)"))
    return bad
