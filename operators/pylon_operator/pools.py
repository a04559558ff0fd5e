"""GPU pool scaling, pure: how many replicas each RayCluster worker group should have, from the
scheduler's pending demand per GPU type and what its pools use now.

No scheduler RPC reports pending demand per GPU type (GetCluster gives each pool's nodes and GPUs
in use; a Queue gives pending job counts, not their GPUs), so the demand comes from ListJobs of
PENDING jobs: each job's workers, GPUs per worker and acceptable GPU types.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pylon.types import GpuPool, Job

# A worker group says which accelerator it is by a Ray resource "accelerator_type:<X>".
ACCELERATOR_PREFIX = "accelerator_type:"


@dataclass(frozen=True)
class WorkerGroup:
    """One RayCluster worker group: its GPU type, GPUs per replica (node), bounds and replicas now."""

    index: int
    name: str
    gpu_type: str
    gpus_per_replica: float
    min_replicas: int
    max_replicas: int
    replicas: int


@dataclass(frozen=True)
class Demand:
    """One pending job's ask: ``workers`` bundles of ``gpus`` GPUs, on one of ``gpu_types``
    (preferred first; empty: any)."""

    workers: int
    gpus: float
    gpu_types: tuple[str, ...]


def _parse_resources(raw: Any) -> dict[str, Any]:
    """rayStartParams' ``resources``: JSON of an object, often itself quoted as a JSON string
    (``'"{\\"accelerator_type:A100\\": 8}"'``) because Ray takes it on a command line."""
    value = raw
    for _ in range(3):
        if isinstance(value, dict):
            return value
        if not isinstance(value, str):
            return {}
        try:
            value = json.loads(value.strip().strip("'"))
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _group_gpu_type(group: dict[str, Any]) -> str:
    """The accelerator of a group: KubeRay 1.7's group ``resources``, else the ``resources`` of
    its rayStartParams; "" when it declares none."""
    declared = dict(group.get("resources") or {}) or _parse_resources((group.get("rayStartParams") or {}).get("resources"))
    for key in declared:
        if str(key).startswith(ACCELERATOR_PREFIX):
            return str(key)[len(ACCELERATOR_PREFIX):]
    return ""


def _group_gpus(group: dict[str, Any]) -> float:
    """GPUs per replica: rayStartParams num-gpus, else the first container's nvidia.com/gpu limit."""
    num = (group.get("rayStartParams") or {}).get("num-gpus")
    if num not in (None, ""):
        return float(num)
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    return float(limits.get("nvidia.com/gpu", 0) or 0)


def worker_groups(raycluster: dict[str, Any]) -> list[WorkerGroup]:
    """The GPU worker groups of a RayCluster object (groups without an accelerator are left out)."""
    out = []
    for i, g in enumerate((raycluster.get("spec") or {}).get("workerGroupSpecs") or []):
        gpu_type, gpus = _group_gpu_type(g), _group_gpus(g)
        if not gpu_type or gpus <= 0:
            continue
        lo = int(g.get("minReplicas", 0) or 0)
        out.append(WorkerGroup(i, str(g.get("groupName", f"group-{i}")), gpu_type, gpus, lo,
                               int(g.get("maxReplicas", lo) or lo), int(g.get("replicas", lo) or 0)))
    return out


def demand_of(jobs: list[Job]) -> list[Demand]:
    """The GPU asks of pending jobs (CPU-only jobs ask nothing of a GPU pool)."""
    out = []
    for job in jobs:
        resources = job.spec.get("resources") or {}
        gpus = float(resources.get("gpus", 0) or 0)
        if job.state == "pending" and gpus > 0:
            out.append(Demand(max(int(job.spec.get("workers", 1) or 1), 1), gpus,
                              tuple(resources.get("gpu_types") or ())))
    return out


def _nodes_for(bundles: list[float], capacity: float) -> int:
    """Nodes of ``capacity`` GPUs that hold the bundles, first-fit decreasing."""
    free: list[float] = []
    for size in sorted(bundles, reverse=True):
        for i, room in enumerate(free):
            if room + 1e-9 >= size:
                free[i] = room - size
                break
        else:
            free.append(capacity - size)
    return len(free)


def _assign(demand: list[Demand], groups: list[WorkerGroup]) -> dict[str, list[float]]:
    """Each job's bundles go to the group of its first acceptable GPU type that can grow and
    whose replicas hold one bundle; a job with no acceptable group is left out."""
    bundles: dict[str, list[float]] = {g.name: [] for g in groups}
    for d in demand:
        wanted = d.gpu_types or tuple(dict.fromkeys(g.gpu_type for g in groups))
        fits = (g for t in wanted for g in groups
                if g.gpu_type == t and g.max_replicas > 0 and g.gpus_per_replica + 1e-9 >= d.gpus)
        group = next(fits, None)
        if group is not None:
            bundles[group.name].extend([d.gpus] * d.workers)
    return bundles


def desired_replicas(groups: list[WorkerGroup], demand: list[Demand], pools: list[GpuPool]) -> dict[str, int]:
    """Replicas per group: the nodes its GPU type keeps busy now plus the nodes its pending jobs
    need, between the group's min and max. Several groups of one type share the busy nodes in
    order."""
    used = {p.gpu_type: p.used_gpus for p in pools}
    bundles = _assign(demand, groups)
    out: dict[str, int] = {}
    for g in groups:
        busy = math.ceil(used.get(g.gpu_type, 0.0) / g.gpus_per_replica - 1e-9)
        busy_here = min(busy, g.max_replicas)
        used[g.gpu_type] = max(used.get(g.gpu_type, 0.0) - busy_here * g.gpus_per_replica, 0.0)
        want = busy_here + _nodes_for(bundles[g.name], g.gpus_per_replica)
        out[g.name] = max(g.min_replicas, min(g.max_replicas, want))
    return out


def damp_scale_down(groups: list[WorkerGroup], desired: dict[str, int], higher_since: dict[str, float],
                    now: float, delay_s: float) -> tuple[dict[str, int], dict[str, float]]:
    """Grow at once, shrink only after demand stayed lower for ``delay_s`` (a job between attempts
    or just admitted must not lose its node). Returns the replicas to set and the new memory of
    when each group's demand first fell below its replicas."""
    out, memory = {}, {}
    for g in groups:
        want = desired[g.name]
        if want >= g.replicas:
            out[g.name] = want
            continue
        since = higher_since.get(g.name, now)
        memory[g.name] = since
        out[g.name] = want if now - since >= delay_s else g.replicas
    return out, memory


def replica_patch(groups: list[WorkerGroup], replicas: dict[str, int]) -> list[dict[str, Any]]:
    """A JSON patch setting each changed group's replicas, each guarded by a test of the group's
    name at its index (a RayCluster edited meanwhile makes the patch fail instead of scaling the
    wrong group)."""
    ops: list[dict[str, Any]] = []
    for g in groups:
        if replicas[g.name] != g.replicas:
            path = f"/spec/workerGroupSpecs/{g.index}"
            ops.append({"op": "test", "path": f"{path}/groupName", "value": g.name})
            # "add" sets a member whether or not the group spells out its replicas.
            ops.append({"op": "add", "path": f"{path}/replicas", "value": replicas[g.name]})
    return ops
