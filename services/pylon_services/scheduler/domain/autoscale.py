"""Declared pools that Kubernetes (KubeRay's autoscaler) may grow: what they add to the cluster
the scheduler may plan for, and the demand to show the autoscaler.

A pool is declared per GPU type with ``min_nodes``/``max_nodes`` and the shape of the nodes it
adds (``gpus_per_node``, ``cpus_per_node``; 0 = unknown). Two consequences:

- **Submit** counts the nodes a pool may still add (``max_nodes`` minus the live ones) as real
  nodes, so a job for a pool scaled to zero is accepted and waits instead of being rejected as
  "unknown GPU type" (scale from zero), while a job no declared shape could ever hold is still
  refused.
- **Passes** only place jobs on live nodes (Ray has to own the capacity before a placement
  group can hold it). Pending jobs that could use a declared pool's headroom become a resource
  request for the autoscaler (``ray.autoscaler.sdk.request_resources`` bundles): one bundle per
  worker, in queue order, capped by each pool's headroom. Ray only adds nodes for what does not
  fit in the free capacity it already has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pylon_services.scheduler.domain.placement import acceptable_types
from pylon_services.scheduler.domain.scheduling import Node, PendingJob

ACCEL_PREFIX = "accelerator_type:"
UNKNOWN_SHAPE_GPUS = 1e6  # a declared node of unknown size never limits the per-worker check


@dataclass(frozen=True)
class DeclaredPool:
    gpu_type: str
    min_nodes: int = 0
    max_nodes: int = 0
    gpus_per_node: float = 0.0
    cpus_per_node: float = 0.0


def headroom(pools: Iterable[DeclaredPool], live: Iterable[Node]) -> dict[str, int]:
    """Nodes each declared pool may still add (``max_nodes`` minus its live nodes, at least 0)."""
    count = Counter(n.gpu_type for n in live)
    return {p.gpu_type: max(0, p.max_nodes - count[p.gpu_type]) for p in pools}


def _shape(pool: DeclaredPool, live: Sequence[Node]) -> tuple[float, float]:
    """(GPUs, CPUs) of a node the pool would add: declared, else its largest live node, else unknown."""
    same = [n for n in live if n.gpu_type == pool.gpu_type]
    gpus = pool.gpus_per_node or max((n.gpus_total for n in same), default=0.0) or UNKNOWN_SHAPE_GPUS
    cpus = pool.cpus_per_node or max((n.cpus_total for n in same), default=0.0)
    return gpus, cpus


def with_declared(live: Sequence[Node], pools: Iterable[DeclaredPool]) -> tuple[Node, ...]:
    """``live`` plus one empty node for each node a declared pool may still add (for the
    submit-time "can this ever run" check, never for placement)."""
    pools = list(pools)
    room = headroom(pools, live)
    extra = []
    for p in pools:
        gpus, cpus = _shape(p, live)
        extra += [Node(id=f"declared:{p.gpu_type}:{i}", gpu_type=p.gpu_type, gpus_total=gpus, gpus_free=gpus,
                       cpus_free=cpus or 1e6, cpus_total=cpus) for i in range(room[p.gpu_type])]
    return tuple(live) + tuple(extra)


def scale_up_plan(pending: Sequence[PendingJob], pools: Iterable[DeclaredPool], live: Sequence[Node],
                  limit: int = 256, already: Sequence[dict[str, float]] = ()
                  ) -> tuple[list[dict[str, float]], dict[str, str]]:
    """The autoscaler request for ``pending`` jobs (in queue order): each job's workers as
    bundles on the first of its acceptable types whose declared pool still has headroom for the
    whole job, at most ``limit`` bundles. GPU headroom is the nodes a pool may add times their
    GPUs; a pool of unknown node shape is counted in nodes (one worker per node).
    ``already``: bundles asked for jobs ahead of these (a plan made earlier over the start of
    the queue); they use up headroom and the limit, and are not returned again.
    Returns the bundles and, per job id asked for, the pool it was asked for in."""
    by_type = {p.gpu_type: p for p in pools}
    room = headroom(by_type.values(), live)
    known_shape = {t: _shape(p, live)[0] < UNKNOWN_SHAPE_GPUS for t, p in by_type.items()}
    left = {t: room[t] * (_shape(p, live)[0] if known_shape[t] else 1.0) for t, p in by_type.items()}
    for b in already:
        t = next((k[len(ACCEL_PREFIX):] for k in b if k.startswith(ACCEL_PREFIX)), "")
        if t in left:
            left[t] -= b.get("GPU", 0.0) if known_shape[t] else 1.0
    limit -= len(already)
    bundles: list[dict[str, float]] = []
    asked: dict[str, str] = {}
    for job in pending:
        d = job.demand
        if d.gpus_per_worker <= 0:
            continue  # CPU jobs never make a GPU pool grow
        for t in acceptable_types(d, list(by_type)):
            need = d.workers * (d.gpus_per_worker if known_shape[t] else 1.0)
            if need <= left[t] + 1e-9 and len(bundles) + d.workers <= limit:
                left[t] -= need
                bundle = {"GPU": d.gpus_per_worker, "CPU": d.cpus_per_worker, ACCEL_PREFIX + t: 0.001}
                bundles += [dict(bundle) for _ in range(d.workers)]
                asked[job.id] = t
                break
    return bundles, asked
