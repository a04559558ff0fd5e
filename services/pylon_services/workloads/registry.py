"""One registry of the built-in workloads a job can name: trainers and serving engines.

A job spec names its workload by kind and name (``trainer: causal-lm``, ``engine: torch``). Each
registration carries what the API needs at submit, a torch-free check of the workload's config
and its worker limits, and where a worker finds the code: a ``module:function`` string that only
the Ray worker running the job imports. So validating a spec never loads torch (or vLLM) into
the API process, the gateway and the scheduler read engine names from the same place, and the
training and serving runtimes add their workloads by registering here (``builtin.py``).

A user command (``command: {argv: ...}``) is not registered: it is the third kind of workload,
run by the scheduler's worker itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pylon_services.workloads.contract import WorkloadContext, WorkloadResult

# (field, description) for each problem of a config; [] when it is valid.
ConfigCheck = Callable[[Mapping[str, Any]], list[tuple[str, str]]]
Entrypoint = Callable[[WorkloadContext], WorkloadResult]


class WorkloadKind(str, Enum):
    TRAINER = "trainer"
    ENGINE = "engine"


def no_config(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The check of a workload that takes no settings: any key is unknown."""
    return [(key, "unknown field") for key in sorted(config)]


@dataclass(frozen=True)
class Workload:
    """One registered trainer or engine."""

    kind: WorkloadKind
    name: str
    # "package.module:function", called in the worker with a WorkloadContext.
    entrypoint: str
    description: str
    check_config: ConfigCheck = no_config
    # Most workers one job of this workload may ask for (None: no limit).
    max_workers: int | None = None
    # Most GPUs one worker may ask for (None: no limit): a workload that runs one process per GPU
    # would leave the rest idle, so the API refuses more at submit.
    max_gpus_per_worker: float | None = None
    # Its datasets must be tokenized: the API pins each one's tokenization at submit.
    needs_tokens: bool = False
    # The registry formats (``ModelFormat`` names) a base model may have; empty: it takes none.
    base_model_formats: tuple[str, ...] = ()
    # The registry format (a ``ModelFormat`` name) of a trainer's output, registered as a model
    # version when its spec names one (``register_model``); empty: its output is not a model.
    output_format: str = ""

    def load(self) -> Entrypoint:
        """Import the workload's code (in the worker only: it may import torch or vLLM)."""
        module, _, function = self.entrypoint.partition(":")
        fn: Entrypoint = getattr(importlib.import_module(module), function)
        return fn


class WorkloadRegistry:
    """Workloads by kind and name; registering a name twice is a programming error."""

    def __init__(self) -> None:
        self._items: dict[tuple[WorkloadKind, str], Workload] = {}

    def register(self, workload: Workload) -> Workload:
        key = (workload.kind, workload.name)
        if key in self._items:
            raise ValueError(f"{workload.kind.value} {workload.name!r} is already registered")
        if ":" not in workload.entrypoint:
            raise ValueError(f"entrypoint {workload.entrypoint!r} must be 'module:function'")
        self._items[key] = workload
        return workload

    def get(self, kind: WorkloadKind, name: str) -> Workload | None:
        return self._items.get((kind, name))

    def names(self, kind: WorkloadKind) -> list[str]:
        return sorted(name for k, name in self._items if k == kind)


REGISTRY = WorkloadRegistry()


def _register_builtins() -> None:
    from pylon_services.workloads.builtin import register

    register(REGISTRY)


_register_builtins()
