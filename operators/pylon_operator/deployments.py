"""ModelDeployment reconcile logic, pure: what to ask the gateway for, and the CR's status from the
deployment it reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pylon.types import Deployment
from pylon_operator.conditions import Progress, summarize

Action = Literal["create", "scale", "wait", "none"]


def deployment_id(name: str, spec: dict[str, Any]) -> str:
    """The gateway's deployment id: spec.deploymentId, else the object's name."""
    return str(spec.get("deploymentId") or name)


def request_id(uid: str) -> str:
    return f"k8s-{uid}"


def create_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The gateway Deployment (protobuf JSON) a ModelDeployment's spec asks for."""
    out: dict[str, Any] = {"modelUri": spec["modelUri"], "replicas": spec.get("replicas", 1),
                           "engine": spec.get("engine", "torch")}
    if "gpusPerReplica" in spec:
        out["gpusPerReplica"] = spec["gpusPerReplica"]
    if spec.get("gpuTypes"):
        out["gpuTypes"] = list(spec["gpuTypes"])
    if spec.get("engineConfig"):
        out["engineConfig"] = spec["engineConfig"]
    return out


def plan(spec: dict[str, Any], observed: Deployment | None) -> Action:
    """Create when the gateway has no such deployment, scale when its replicas differ from the
    spec's, wait while it is being deleted, else nothing."""
    if observed is None:
        return "create"
    if observed.state == "deleting":
        return "wait"
    if observed.replicas != int(spec.get("replicas", 1)):
        return "scale"
    return "none"


def observed_status(prev: dict[str, Any], spec: dict[str, Any], dep: Deployment, generation: int, now: datetime
                    ) -> dict[str, Any]:
    """The CR status that mirrors the gateway's deployment. observedGeneration moves to this
    generation once the gateway runs the replica count this generation asks for."""
    want = int(spec.get("replicas", 1))
    ready = sum(r.ready for r in dep.replica_status)
    caught_up = dep.replicas == want
    progress: Progress
    if dep.state == "failed":
        phase, progress, reason = "Failed", "stalled", "DeploymentFailed"
    elif dep.state == "deleting":
        phase, progress, reason = "Deleting", "progressing", "Deleting"
    elif dep.state == "ready" and caught_up:
        phase, progress, reason = "Ready", "ready", "Serving"
    elif dep.state == "ready":
        phase, progress, reason = "Ready", "progressing", "Scaling"
    else:
        phase, progress, reason = "Pending", "progressing", "ReplicasStarting"
    message = dep.message or f"{ready}/{dep.replicas} replicas serve {dep.model_version or dep.model_uri}"
    observed_gen = generation if caught_up else int(prev.get("observedGeneration", 0))
    return {
        "observedGeneration": observed_gen, "phase": phase, "deploymentName": dep.name,
        "modelVersion": dep.model_version, "replicas": dep.replicas, "readyReplicas": ready, "message": message,
        "metrics": {"replicas": dep.replicas, "readyReplicas": ready,
                    "runningRequests": sum(r.running_requests for r in dep.replica_status)},
        "conditions": summarize(prev.get("conditions", []), progress, reason, message, observed_gen, now),
    }


def rejected_status(prev: dict[str, Any], message: str, generation: int, now: datetime) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": "Failed", "message": message,
            "conditions": summarize(prev.get("conditions", []), "stalled", "InvalidSpec", message, generation, now)}
