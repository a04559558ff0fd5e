"""TrainingJob reconcile logic, pure: the CR's spec to the scheduler's JobSpec, a scheduler job to the
CR's status, and what deleting the CR must do. The kopf handlers call these and do the I/O."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pylon.types import Job
from pylon_operator.conditions import Progress, status_changed, summarize

# Scheduler job state -> (CR phase, kstatus outcome, condition reason).
PHASES: dict[str, tuple[str, Progress, str]] = {
    "pending": ("Pending", "progressing", "Queued"),
    "admitted": ("Starting", "progressing", "Admitted"),
    "starting": ("Starting", "progressing", "Starting"),
    "running": ("Running", "progressing", "Running"),
    "preempting": ("Preempting", "progressing", "Preempting"),
    "succeeded": ("Succeeded", "ready", "Succeeded"),
    "failed": ("Failed", "stalled", "JobFailed"),
    "cancelled": ("Cancelled", "stalled", "Cancelled"),
}
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
# Labels the operator adds to every job it submits, so `pylon jobs list` shows where a job came from.
SOURCE_LABELS = ("k8s.pylon.dev/namespace", "k8s.pylon.dev/name")
_PLACEMENT = {"Pack": "PLACEMENT_STRATEGY_PACK", "Spread": "PLACEMENT_STRATEGY_SPREAD"}
# CR fields that pass to the JobSpec unchanged (the CR uses the JobSpec's JSON names).
_SAME = ("queue", "priorityClass", "workers", "resources", "gang", "trainer", "command", "maxRetries",
         "preemptible", "checkpointEverySteps", "jobType", "totalSteps")


def request_id(uid: str) -> str:
    """The submit's request_id: the object's uid, so a retried create is the same job."""
    return f"k8s-{uid}"


def job_spec(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The scheduler JobSpec (protobuf JSON) a TrainingJob's spec asks for."""
    out = {k: spec[k] for k in _SAME if k in spec}
    if "placement" in spec:
        out["placement"] = _PLACEMENT[spec["placement"]]
    for ours, theirs in (("maxRuntimeSeconds", "maxRuntime"), ("stallTimeoutSeconds", "stallTimeout")):
        if spec.get(ours):
            out[theirs] = f"{int(spec[ours])}s"
    out["labels"] = {**spec.get("labels", {}), SOURCE_LABELS[0]: namespace, SOURCE_LABELS[1]: name}
    out["displayName"] = spec.get("displayName") or f"{namespace}/{name}"
    return out


def job_metrics(job: Job) -> dict[str, float]:
    """The job's latest numbers for status.metrics: step, progress, ETA and the reported metrics."""
    out: dict[str, float] = {}
    for key, value in job.metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    ts = job.trainer_status
    if ts is not None:
        out.update({k: v for k, v in ts.metrics.items() if math.isfinite(v)})
        if ts.progress_percentage is not None:
            out["progressPercentage"] = ts.progress_percentage
        if ts.estimated_remaining_seconds is not None:
            out["estimatedRemainingSeconds"] = ts.estimated_remaining_seconds
    out["step"] = job.step
    return out


def observed_status(prev: dict[str, Any], job: Job, generation: int, now: datetime) -> dict[str, Any]:
    """The CR status that mirrors the scheduler's job."""
    phase, progress, reason = PHASES.get(job.state, ("Pending", "progressing", "Unknown"))
    message = job.message or f"job {job.name} is {job.state}"
    status: dict[str, Any] = {
        "observedGeneration": generation, "phase": phase, "jobName": job.name, "state": job.state,
        "message": message, "attempt": job.attempt, "retries": job.retries, "preemptions": job.preemptions,
        "gpuType": job.gpu_type, "exitCode": job.exit_code, "outputUri": job.output_uri,
        "registeredModelVersion": job.registered_model_version, "metrics": job_metrics(job),
        "conditions": summarize(prev.get("conditions", []), progress, reason, message, generation, now),
    }
    if job.started:
        status["startTime"] = job.started.strftime("%Y-%m-%dT%H:%M:%SZ")
    if job.ended:
        status["endTime"] = job.ended.strftime("%Y-%m-%dT%H:%M:%SZ")
    return status


def rejected_status(prev: dict[str, Any], message: str, generation: int, now: datetime) -> dict[str, Any]:
    """The scheduler refused the spec for good (INVALID_ARGUMENT and the like): Failed, with its words."""
    return {"observedGeneration": generation, "phase": "Failed", "message": message,
            "conditions": summarize(prev.get("conditions", []), "stalled", "InvalidSpec", message, generation, now)}


def unreachable_status(prev: dict[str, Any], service: str, message: str, generation: int, now: datetime
                       ) -> dict[str, Any]:
    """The service cannot be reached: the phase stays, the conditions say why nothing moves."""
    reason = f"{service.capitalize()}Unavailable"
    text = f"the {service} is unreachable, retrying: {message}"
    return {"phase": prev.get("phase") or "Pending",
            "conditions": summarize(prev.get("conditions", []), "progressing", reason, text,
                                    int(prev.get("observedGeneration", generation)), now)}


def needs_submit(status: dict[str, Any]) -> bool:
    return not status.get("jobName") and status.get("phase") not in TERMINAL_PHASES


def needs_sync(status: dict[str, Any]) -> bool:
    """Whether the scheduler's job may still change (the timer's poll stops once it has ended)."""
    return bool(status.get("jobName")) and status.get("phase") not in TERMINAL_PHASES


def needs_cancel(status: dict[str, Any]) -> bool:
    """Deleting the CR cancels its job unless the job has ended (or was never submitted)."""
    return bool(status.get("jobName")) and status.get("phase") not in TERMINAL_PHASES


__all__ = ["PHASES", "TERMINAL_PHASES", "job_spec", "needs_cancel", "needs_submit", "needs_sync", "observed_status",
           "rejected_status", "request_id", "status_changed", "unreachable_status"]
