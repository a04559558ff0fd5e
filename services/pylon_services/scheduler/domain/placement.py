"""Where a job's workers go: an index of free capacity per GPU type, and gang placement.

A pass asks "can this gang of W workers x g GPUs fit on nodes of type T?" thousands of times, so
free capacity is kept per GPU type in a list sorted by free GPUs: a best-fit lookup is a binary
search, and a type whose largest free node is too small is rejected in O(1). A gang is placed
all-or-nothing: a partial placement is rolled back. ``check_satisfiable`` rejects at submit the
requests no node can ever hold.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from pylon_services.scheduler.domain.scheduling import Demand, Node

EPS = 1e-9


@dataclass(frozen=True)
class _Free:
    gpu_type: str
    gpus: float
    cpus: float
    memory: int


class FreeIndex:
    """Free GPUs/CPUs/memory of every healthy node, indexed by GPU type for best-fit lookups."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: dict[str, _Free] = {}
        self.by_type: dict[str, list[tuple[float, str]]] = {}
        self.capacity: dict[str, float] = {}
        self.largest_node: dict[str, float] = {}
        for n in nodes:
            if not n.healthy:
                continue
            self.nodes[n.id] = _Free(n.gpu_type, n.gpus_free, n.cpus_free, n.memory_free_bytes)
            self.by_type.setdefault(n.gpu_type, []).append((n.gpus_free, n.id))
            self.capacity[n.gpu_type] = self.capacity.get(n.gpu_type, 0.0) + n.gpus_total
            self.largest_node[n.gpu_type] = max(self.largest_node.get(n.gpu_type, 0.0), n.gpus_total)
        for entries in self.by_type.values():
            entries.sort()
        self.free_gpus: dict[str, float] = {t: sum(g for g, _ in e) for t, e in self.by_type.items()}

    def scratch(self, gpu_type: str) -> FreeIndex:
        """A cheap private copy of one GPU type's free capacity, for what-if placement."""
        copy = FreeIndex(())
        copy.by_type[gpu_type] = list(self.by_type.get(gpu_type, []))
        copy.nodes = dict(self.nodes)  # _Free records are replaced, never mutated: sharing is safe
        copy.free_gpus[gpu_type] = self.free_gpus.get(gpu_type, 0.0)
        return copy

    def types(self) -> list[str]:
        return sorted(self.by_type)

    def max_free(self, gpu_type: str) -> float:
        entries = self.by_type.get(gpu_type)
        return entries[-1][0] if entries else 0.0

    def place(self, demand: Demand, gpu_type: str, exclude: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
        """Allocate every worker of ``demand`` on nodes of ``gpu_type`` (best fit), or nothing."""
        g = demand.gpus_per_worker
        if self.max_free(gpu_type) + EPS < g or self.free_gpus.get(gpu_type, 0.0) + EPS < demand.total_gpus:
            return None
        chosen: list[str] = []
        for _ in range(demand.workers):
            node = self._best_fit(demand, gpu_type, exclude)
            if node is None:
                self.release(chosen, demand)
                return None
            self._take(node, demand, +1)
            chosen.append(node)
        return tuple(chosen)

    def _best_fit(self, demand: Demand, gpu_type: str, exclude: frozenset[str]) -> str | None:
        entries = self.by_type[gpu_type]
        i = bisect.bisect_left(entries, (demand.gpus_per_worker - EPS, ""))
        for _, node_id in entries[i:]:
            f = self.nodes[node_id]
            if node_id in exclude:
                continue
            if f.cpus + EPS >= demand.cpus_per_worker and f.memory >= demand.memory_bytes_per_worker:
                return node_id
        return None

    def _take(self, node_id: str, demand: Demand, sign: int) -> None:
        f = self.nodes[node_id]
        entries = self.by_type[f.gpu_type]
        del entries[bisect.bisect_left(entries, (f.gpus, node_id))]
        f = self.nodes[node_id] = _Free(f.gpu_type, f.gpus - sign * demand.gpus_per_worker,
                                        f.cpus - sign * demand.cpus_per_worker,
                                        f.memory - sign * demand.memory_bytes_per_worker)
        bisect.insort(entries, (f.gpus, node_id))
        self.free_gpus[f.gpu_type] -= sign * demand.gpus_per_worker

    def _indexed(self, node_id: str) -> bool:
        """Whether this index tracks the node (a ``scratch`` copy tracks one GPU type only, and a
        split gang=false job may hold nodes of several)."""
        f = self.nodes.get(node_id)
        return f is not None and f.gpu_type in self.by_type

    def release(self, nodes: Iterable[str], demand: Demand) -> None:
        """Give back one worker's share of ``demand`` on each listed node."""
        for n in nodes:
            if self._indexed(n):
                self._take(n, demand, -1)

    def workers_that_fit(self, demand: Demand, gpu_type: str) -> int:
        """How many workers of ``demand`` fit on ``gpu_type`` right now (for explanations)."""
        g = demand.gpus_per_worker
        count = 0
        for free_g, node_id in self.by_type.get(gpu_type, []):
            f = self.nodes[node_id]
            per_node = int((free_g + EPS) // g) if g > 0 else demand.workers
            if demand.cpus_per_worker > 0:
                per_node = min(per_node, int((f.cpus + EPS) // demand.cpus_per_worker))
            if demand.memory_bytes_per_worker > 0:
                per_node = min(per_node, f.memory // demand.memory_bytes_per_worker)
            count += max(0, per_node)
        return count


def acceptable_types(demand: Demand, available: Iterable[str]) -> list[str]:
    """The GPU types this job may run on, in its order of preference (all GPU types for "any";
    CPU nodes only serve jobs that ask for no GPU)."""
    avail = list(available)
    if demand.gpu_types and "any" not in demand.gpu_types:
        return [t for t in demand.gpu_types if t in avail]
    if demand.gpus_per_worker <= 0:
        return sorted(avail, key=lambda t: (t != "cpu", t))
    return sorted(t for t in avail if t != "cpu")


def check_satisfiable(demand: Demand, nodes: Iterable[Node]) -> str | None:
    """Why no node of the cluster can EVER hold this request, or None when some could.

    Called at submit so an impossible job is rejected instead of pending forever: an unknown
    GPU type, more GPUs/CPUs/memory per worker than any acceptable node has, or a gang larger
    than every acceptable pool.
    """
    nodes = [n for n in nodes]
    types = sorted({n.gpu_type for n in nodes})
    wanted = [t for t in demand.gpu_types if t != "any"]
    unknown = [t for t in wanted if t not in types]
    if unknown:
        return f"unknown GPU type(s) {unknown}; the cluster has {types}"
    if demand.workers < 1 or demand.gpus_per_worker < 0:
        return "a job needs at least one worker and a non-negative GPU count"
    candidates = acceptable_types(demand, types)
    if demand.gpus_per_worker > 0:
        candidates = [t for t in candidates if t != "cpu"]
    if not candidates:
        return f"no GPU pool in the cluster (it has {types})"
    best_why = ""
    total_slots = 0
    largest = (0.0, "")  # GPUs and type of the largest acceptable node ("no node holds even one worker")
    one_fits = False
    for t in candidates:
        pool = [n for n in nodes if n.gpu_type == t]
        largest = max([largest, *((n.gpus_total, t) for n in pool)])
        fits = [n for n in pool if n.gpus_total + EPS >= demand.gpus_per_worker
                and (n.cpus_total or float("inf")) + EPS >= demand.cpus_per_worker]
        if not fits:
            continue
        one_fits = True
        slots = sum(int((n.gpus_total + EPS) // demand.gpus_per_worker) if demand.gpus_per_worker > 0
                    else demand.workers for n in fits)
        total_slots += slots
        if not demand.gang and total_slots >= demand.workers:
            return None  # gang=false: the workers may span the acceptable types
        if slots < demand.workers:
            best_why = f"a gang of {demand.workers} workers but the whole {t} pool holds {slots}"
            continue
        return None
    if not one_fits:
        return (f"no node can ever hold one worker: {demand.gpus_per_worker:g} GPUs per worker (and "
                f"{demand.cpus_per_worker:g} CPUs) but the largest {largest[1]} node has {largest[0]:g} GPUs")
    if not demand.gang and total_slots:
        best_why = f"{demand.workers} workers but the acceptable pools together hold {total_slots}"
    return f"no node can ever hold this request: {best_why}"

