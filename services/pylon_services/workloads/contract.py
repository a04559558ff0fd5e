"""What the scheduler's worker gives a trainer or engine, and what it gets back.

The worker (``pylon_services.scheduler.worker``) implements ``WorkloadContext``; trainers and
engines depend only on this protocol, never on the scheduler, so they can be tested with a small
context of their own and the scheduler can change how it runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the API imports this module: only types here, nothing of the runtime
    from pylon_services.runtime.settings import Settings
    from pylon_services.storage.base import ObjectStore

# Exit code of a workload that stopped because it was preempted, after checkpointing
# (EX_TEMPFAIL): the scheduler requeues it and the next attempt resumes.
PREEMPTED_EXIT_CODE = 75


@dataclass
class WorkloadResult:
    """How one worker's run ended; the scheduler decides success, retry or requeue from it."""

    exit_code: int = 0
    error: str = ""
    # Object-store prefix of the job's final output (a trainer's model files).
    output_uri: str = ""
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "error": self.error, "output_uri": self.output_uri,
                "step": self.step, "metrics": dict(self.metrics)}


class WorkloadContext(Protocol):
    """One worker of one job attempt, as its trainer or engine sees it."""

    tenant: str
    job_id: str
    attempt: int
    rank: int
    world_size: int
    # The workload's own section of the job spec (a trainer's or engine's fields), as stored.
    workload: Mapping[str, Any]
    # The job's checkpoint_every_steps (0: the workload's default).
    checkpoint_every_steps: int
    settings: Settings
    store: ObjectStore

    @property
    def job_name(self) -> str: ...

    def log(self, text: str) -> None:
        """Append lines to the job's log (``pylon jobs logs``)."""

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Report metrics of a step (``ListJobMetrics``); also feeds the scheduler's step rate."""

    def stop_requested(self) -> bool:
        """True once the job is cancelled or preempted: checkpoint if preempted, then return."""

    def preempt_requested(self) -> bool:
        """True once the scheduler asked the job to yield its resources (requeued afterwards)."""

    def save_checkpoint(self, step: int, files: Mapping[str, bytes]) -> None:
        """Store a whole checkpoint of ``step``; a crash mid-write never makes it the latest."""

    def load_checkpoint(self) -> dict[str, bytes]:
        """The latest checkpoint an earlier attempt left, or {}."""

    def output_prefix(self) -> str:
        """Where the job's final output goes in the object store."""
