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
    from pylon_services.workloads.checkpoints import CheckpointWriter

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
    # False when another attempt would fail the same way (a diverged loss): the job fails at once
    # instead of spending its retries.
    retryable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "error": self.error, "output_uri": self.output_uri,
                "step": self.step, "metrics": dict(self.metrics), "retryable": self.retryable}


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

    def report_progress(self, step: int, total_steps: int, metrics: Mapping[str, float]) -> None:
        """Report a step's metrics (as ``metrics``) and, at most every few seconds and always at
        the final step, the job's live status: step of ``total_steps`` and a summary of the
        metrics (loss, lr, grad_norm, tokens_per_s, mfu, eta_s)."""

    def checkpoints(self, keep: int = 3) -> CheckpointWriter:
        """This rank's background checkpoint writer on the job's checkpoint prefix (one per worker;
        see ``pylon_services.workloads.checkpoints``): every rank saves its own
        files at the same steps, rank 0 makes each save visible once all parts are in, and the
        newest ``keep`` whole checkpoints are kept."""

    def load_latest_checkpoint(self, rank: int | None = None, at_most: int | None = None
                               ) -> tuple[int, dict[str, bytes]] | None:
        """(step, this rank's files) of the newest whole, valid checkpoint, or None; ``rank``
        reads another rank's part (a gang reads rank 0's model and optimizer), ``at_most`` skips
        newer steps."""

    def rendezvous(self, timeout_s: float = 120.0) -> tuple[str, int]:
        """(master_addr, master_port) for ``torch.distributed`` across the job's workers: rank 0
        picks them and publishes them for this attempt, the other ranks wait for them (up to
        ``timeout_s``, then TimeoutError)."""

    def save_checkpoint(self, step: int, files: Mapping[str, bytes]) -> None:
        """Store a whole checkpoint of ``step`` and return once it is visible (``checkpoints()``
        without the background: every rank of a gang must call it at the same step)."""

    def load_checkpoint(self) -> dict[str, bytes]:
        """This rank's files of the latest whole checkpoint an earlier attempt left, or {}."""

    def output_prefix(self) -> str:
        """Where the job's final output goes in the object store."""
