"""Ray adapter: discover GPU pools, start a job attempt as a detached named placement group with
one task per worker (submitted and owned by the detached launcher actor, ``launcher.py``),
check on it, and free it.

Everything is named by job and attempt (``{instance}-{tenant}-{id}-a{attempt}``) and lives
apart from the scheduler process, so a scheduler that dies does not take running jobs with it,
its successor finds them by name (adoption), and launching twice starts nothing twice
(idempotent dispatch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group

from pylon_services.scheduler.domain.job import Job, PoolCapacity

ACCEL_PREFIX = "accelerator_type:"


@dataclass(frozen=True)
class RayNode:
    """One Ray node with its totals (free capacity comes from the ledger, not from Ray)."""

    id: str
    gpu_type: str
    gpus: float
    cpus: float
    memory: float
    alive: bool


def _pool_of(resources: dict[str, float]) -> str:
    types = [k[len(ACCEL_PREFIX):] for k in resources if k.startswith(ACCEL_PREFIX)]
    return types[0] if types and resources.get("GPU", 0) > 0 else "cpu"


class RayExecutor:
    def __init__(self, address: str, settings: dict[str, Any], node_ip_address: str = "", instance: str = "pylon") -> None:
        self.instance = instance  # Ray namespace and name prefix: schedulers of two platforms never meet
        self.address = address
        self.node_ip_address = node_ip_address
        self.settings = settings
        self._launcher: Any = None
        self._nodes_cache: tuple[float, list[RayNode]] = (0.0, [])

    def connect(self) -> None:
        extra = {"_node_ip_address": self.node_ip_address} if self.node_ip_address else {}
        ray.init(address=self.address or None, namespace=self.instance, log_to_driver=False,
                 ignore_reinit_error=True, include_dashboard=False if not self.address else None, **extra)
        from pylon_services.scheduler.launcher import Launcher

        self._launcher = ray.remote(Launcher).options(
            name=f"{self.instance}-launcher", namespace=self.instance, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_concurrency=32, max_restarts=0).remote()

    def attempt_name(self, job: Job, attempt: int | None = None) -> str:
        return f"{self.instance}-{job.tenant}-{job.id}-a{job.attempt if attempt is None else attempt}"

    def cached_nodes(self, max_age_s: float = 1.0) -> list[RayNode] | None:
        """The node list if fetched within ``max_age_s`` (no GCS call, safe on the event loop)."""
        at, cached = self._nodes_cache
        return cached if time.monotonic() - at < max_age_s else None

    def nodes(self, max_age_s: float = 1.0) -> list[RayNode]:
        """All nodes Ray knows, alive or not (cached briefly: GCS calls are not free)."""
        at, cached = self._nodes_cache
        if time.monotonic() - at < max_age_s:
            return cached
        out = [RayNode(n["NodeID"], _pool_of(n["Resources"]), n["Resources"].get("GPU", 0.0),
                       n["Resources"].get("CPU", 0.0), n["Resources"].get("memory", 0.0), bool(n.get("Alive")))
               for n in ray.nodes()]
        self._nodes_cache = (time.monotonic(), out)
        return out

    def capacities(self, nodes: list[RayNode] | None = None) -> list[PoolCapacity]:
        pools: dict[str, list[RayNode]] = {}
        for n in nodes if nodes is not None else self.nodes():
            if n.alive:
                pools.setdefault(n.gpu_type, []).append(n)
        return [PoolCapacity(t, max(n.gpus for n in ns), max(n.cpus for n in ns), len(ns)) for t, ns in pools.items()]

    @staticmethod
    def _bundle(job: Job, gpu_type: str) -> dict[str, float]:
        res = job.spec.get("resources", {})
        bundle: dict[str, float] = {"CPU": float(res.get("cpus", 1) or 1)}
        if float(res.get("gpus", 0) or 0) > 0:
            bundle["GPU"] = float(res["gpus"])
            bundle[ACCEL_PREFIX + gpu_type] = 0.001
        if int(res.get("memory_bytes", 0) or 0) > 0:
            bundle["memory"] = float(res["memory_bytes"])
        return bundle

    def launch(self, job: Job) -> None:
        """Create the attempt's placement group and have the launcher start its worker tasks,
        unless either already exists (a repeated launch after a crash starts nothing twice)."""
        name = self.attempt_name(job)
        bundle = self._bundle(job, job.gpu_type)
        if not self.exists(job):
            strategy = "SPREAD" if job.spec.get("placement") == "spread" else "PACK"
            placement_group([dict(bundle) for _ in range(job.workers)], strategy=strategy, name=name,
                                 lifetime="detached")
        opts: dict[str, Any] = {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0)}
        extra = {k: v for k, v in bundle.items() if k.startswith(ACCEL_PREFIX)}
        if extra:
            opts["resources"] = extra
        if "memory" in bundle:
            opts["memory"] = bundle["memory"]
        ray.get(self._launcher.launch.remote(name, job.to_dict(), self.settings, opts))

    def placed_nodes(self, job: Job) -> list[str] | None:
        """Node id of each worker once the placement group exists, else None (still waiting)."""
        try:
            pg = get_placement_group(self.attempt_name(job))
        except ValueError:
            return None
        table = ray.util.placement_group_table(pg)
        if table.get("state") != "CREATED":
            return None
        by_index = table.get("bundles_to_node_id", {})
        return [by_index.get(i, "") for i in range(job.workers)]

    def exists(self, job: Job) -> bool:
        """Whether the attempt's placement group is still there (launched and not released)."""
        try:
            get_placement_group(self.attempt_name(job))
            return True
        except ValueError:
            return False

    def workers_alive(self, job: Job) -> bool:
        """True while every worker task of the current attempt runs (or ended normally)."""
        return bool(ray.get(self._launcher.alive.remote(self.attempt_name(job))))

    def release(self, job: Job, attempt: int | None = None) -> None:
        """Kill the attempt's workers and remove its placement group (idempotent)."""
        name = self.attempt_name(job, attempt)
        ray.get(self._launcher.stop.remote(name))
        try:
            remove_placement_group(get_placement_group(name))
        except ValueError:
            pass

    def orphans(self, wanted: set[str]) -> list[str]:
        """Names of Pylon placement groups Ray holds that no active attempt in ``wanted`` owns."""
        out = []
        for info in ray.util.placement_group_table().values():
            name = info.get("name", "")
            if name.startswith(f"{self.instance}-") and info.get("state") != "REMOVED" and name not in wanted:
                out.append(name)
        return out

    @staticmethod
    def remove_by_name(name: str) -> None:
        try:
            remove_placement_group(get_placement_group(name))
        except ValueError:
            pass
