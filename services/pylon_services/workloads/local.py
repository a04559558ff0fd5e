"""``LocalContext``: a ``WorkloadContext`` for running a trainer outside the platform, on a local
directory used as its object store: no scheduler, Redis or Ray. Benchmarks and tests run the
built-in trainers through it (a fake at our own port, not a mock of the worker); a user can debug a
trainer config on a laptop the same way. Checkpoints use the platform's writer and reader, so the
layout, the background uploads and the fallback past a corrupt checkpoint are the real ones.
A gang runs one process per rank with the same ``rendezvous_port``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pylon_services.storage.local import LocalObjectStore
from pylon_services.workloads.checkpoints import CheckpointWriter, latest_checkpoint


@dataclass
class LocalContext:
    root: str
    workload: Mapping[str, Any]
    rank: int = 0
    world_size: int = 1
    job_id: str = "job1"
    tenant: str = "acme"
    attempt: int = 1
    checkpoint_every_steps: int = 0
    rendezvous_port: int = 0
    stop_after_step: int | None = None  # stop_requested() turns True once this step was reported
    settings: Any = None
    lines: list[str] = field(default_factory=list)
    progress: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)
    preempted: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.store = LocalObjectStore(self.root)

    @property
    def job_name(self) -> str:
        return f"tenants/{self.tenant}/jobs/{self.job_id}"

    def _prefix(self) -> str:
        return f"{self.job_name}/checkpoint/"

    def log(self, text: str) -> None:
        self.lines.extend(text.rstrip("\n").split("\n"))

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def report_progress(self, step: int, total_steps: int, metrics: Mapping[str, float]) -> None:
        self.progress.append((step, total_steps, dict(metrics)))
        if self.stop_after_step is not None and step >= self.stop_after_step:
            self.preempted.set()

    def stop_requested(self) -> bool:
        return self.preempted.is_set()

    def preempt_requested(self) -> bool:
        return self.preempted.is_set()

    def checkpoints(self, keep: int = 3) -> CheckpointWriter:
        return CheckpointWriter(self.store, self._prefix(), rank=self.rank, world_size=self.world_size, keep=keep,
                                log=self.log)

    def load_latest_checkpoint(self, rank: int | None = None, at_most: int | None = None
                               ) -> tuple[int, dict[str, bytes]] | None:
        return latest_checkpoint(self.store, self._prefix(), rank=self.rank if rank is None else rank, log=self.log,
                                 at_most=at_most)

    def rendezvous(self, timeout_s: float = 120.0) -> tuple[str, int]:
        return "127.0.0.1", self.rendezvous_port

    def output_prefix(self) -> str:
        return f"{self.job_name}/output"

