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
from pylon_services.engines.contract import SamplingOptions
from pylon_services.engines.contract import sampling_violations as engine_sampling_violations

MAX_GPUS_PER_REPLICA = 64.0
MAX_GPU_TYPES = 16
GPU_TYPE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 16
MAX_PROMPT_BYTES = 64 * 1024
DEFAULT_MAX_TOKENS = 64  # what a request that names no max_tokens gets


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


def sampling_violations(prompt: str, options: SamplingOptions) -> list[FieldViolation]:
    """Generate's inputs: a prompt the gateway relays, and sampling by the engines' own rules."""
    bad = []
    if not prompt:
        bad.append(FieldViolation("prompt", "must not be empty"))
    elif len(prompt.encode()) > MAX_PROMPT_BYTES:
        bad.append(FieldViolation("prompt", f"must be at most {MAX_PROMPT_BYTES >> 10} KiB"))
    return bad + engine_sampling_violations(options)
