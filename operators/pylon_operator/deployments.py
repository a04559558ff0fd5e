"""ModelDeployment reconcile logic, pure: what to ask the gateway for, and the CR's status from the
deployment it reports. The spec is the truth: replicas and sharedWith that differ from the gateway's
are set back to the spec's (a sharing changed through the SDK is undone at the next reconcile)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pylon.types import Deployment
from pylon_operator.conditions import Progress, summarize

Action = Literal["create", "scale", "share", "wait", "none"]
DEFAULT_PRIORITY_CLASS = "high"  # the gateway's default, and the CRD's


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
    if spec.get("priorityClass"):
        out["priorityClass"] = spec["priorityClass"]
    if spec.get("sharedWith"):
        out["sharedWith"] = shared_with(spec)
    return out


def shared_with(spec: dict[str, Any]) -> list[str]:
    """The tenants the spec shares the deployment with ("*": every tenant), in the spec's order."""
    return [str(t) for t in spec.get("sharedWith") or []]


def sharing_differs(spec: dict[str, Any], observed: Deployment) -> bool:
    """Whether the gateway's sharing is not the spec's; order does not count (a set, as the CRD's
    listType says)."""
    return set(shared_with(spec)) != set(observed.shared_with)


def plan(spec: dict[str, Any], observed: Deployment | None) -> Action:
    """Create when the gateway has no such deployment, wait while it is being deleted, scale when
    its replicas differ from the spec's, share when its sharing does, else nothing. One step at a
    time: the caller plans again with the deployment each step returns."""
    if observed is None:
        return "create"
    if observed.state == "deleting":
        return "wait"
    if observed.replicas != int(spec.get("replicas", 1)):
        return "scale"
    if sharing_differs(spec, observed):
        return "share"
    return "none"


def observed_status(prev: dict[str, Any], spec: dict[str, Any], dep: Deployment, generation: int, now: datetime
                    ) -> dict[str, Any]:
    """The CR status that mirrors the gateway's deployment. observedGeneration moves to this
    generation once the gateway runs the replica count and sharing this generation asks for;
    priorityClass and sharedWith are the gateway's (what is in effect)."""
    want = int(spec.get("replicas", 1))
    ready = sum(r.ready for r in dep.replica_status)
    caught_up = dep.replicas == want and not sharing_differs(spec, dep)
    progress: Progress
    if dep.state == "failed":
        phase, progress, reason = "Failed", "stalled", "DeploymentFailed"
    elif dep.state == "deleting":
        phase, progress, reason = "Deleting", "progressing", "Deleting"
    elif dep.state == "ready" and caught_up:
        phase, progress, reason = "Ready", "ready", "Serving"
    elif dep.state == "ready":
        phase, progress, reason = "Ready", "progressing", "Scaling" if dep.replicas != want else "Sharing"
    else:
        phase, progress, reason = "Pending", "progressing", "ReplicasStarting"
    message = dep.message or f"{ready}/{dep.replicas} replicas serve {dep.model_version or dep.model_uri}"
    observed_gen = generation if caught_up else int(prev.get("observedGeneration", 0))
    return {
        "observedGeneration": observed_gen, "phase": phase, "deploymentName": dep.name,
        "modelVersion": dep.model_version, "replicas": dep.replicas, "readyReplicas": ready, "message": message,
        "priorityClass": dep.priority_class or DEFAULT_PRIORITY_CLASS, "sharedWith": list(dep.shared_with),
        "metrics": {"replicas": dep.replicas, "readyReplicas": ready,
                    "runningRequests": sum(r.running_requests for r in dep.replica_status)},
        "conditions": summarize(prev.get("conditions", []), progress, reason, message, observed_gen, now),
    }


def rejected_status(prev: dict[str, Any], message: str, generation: int, now: datetime) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": "Failed", "message": message,
            "conditions": summarize(prev.get("conditions", []), "stalled", "InvalidSpec", message, generation, now)}
