"""Ray adapter: discover GPU pools, start a job attempt in a placement group, wait, cancel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pylon_services.scheduler.domain.job import Job, PoolCapacity
from pylon_services.scheduler.domain.policy import Free

ACCEL_PREFIX = "accelerator_type:"
PG_READY_TIMEOUT_S = 120.0


@dataclass
class Attempt:
    pg: PlacementGroup
    refs: list[Any]


def _pool_of(resources: dict[str, float]) -> str:
    types = [k[len(ACCEL_PREFIX):] for k in resources if k.startswith(ACCEL_PREFIX)]
    return types[0] if types and resources.get("GPU", 0) > 0 else "cpu"


class RayExecutor:
    def __init__(self, address: str, settings: dict[str, Any], node_ip_address: str = "") -> None:
        self.address = address
        self.node_ip_address = node_ip_address
        self.settings = settings
        self._remote: Any = None

    def connect(self) -> None:
        extra = {"_node_ip_address": self.node_ip_address} if self.node_ip_address else {}
        ray.init(address=self.address or None, namespace="pylon", log_to_driver=False,
                 ignore_reinit_error=True, include_dashboard=False if not self.address else None, **extra)
        from pylon_services.scheduler.workload import run_workload

        self._remote = ray.remote(run_workload)

    def capacities(self) -> list[PoolCapacity]:
        pools: dict[str, list[dict[str, float]]] = {}
        for node in ray.nodes():
            if node.get("Alive"):
                pools.setdefault(_pool_of(node["Resources"]), []).append(node["Resources"])
        return [PoolCapacity(t, max(r.get("GPU", 0) for r in rs), max(r.get("CPU", 0) for r in rs), len(rs))
                for t, rs in pools.items()]

    def free(self) -> dict[str, Free]:
        """Free GPUs/CPUs per pool, from each live node's available resources."""
        avail = ray._private.state.state.available_resources_per_node()  # noqa: SLF001 - no public per-node API
        out: dict[str, Free] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            a = avail.get(node["NodeID"], {})
            f = out.setdefault(_pool_of(node["Resources"]), Free(0.0, 0.0))
            f.gpus += a.get("GPU", 0.0)
            f.cpus += a.get("CPU", 0.0)
        return out

    def launch(self, job: Job, pool: str, attempt: int) -> Attempt:
        res = job.spec.get("resources", {})
        bundle: dict[str, float] = {"CPU": float(res.get("cpus", 1) or 1)}
        if float(res.get("gpus", 0)) > 0:
            bundle["GPU"] = float(res["gpus"])
            bundle[ACCEL_PREFIX + pool] = 0.001
        workers = int(job.spec.get("workers", 1))
        strategy = "SPREAD" if job.spec.get("placement") == "spread" else "PACK"
        pg = placement_group([dict(bundle) for _ in range(workers)], strategy=strategy, name=f"pylon-{job.id}")
        refs = []
        for rank in range(workers):
            opts = {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0), "max_retries": 0,
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank)}
            if ACCEL_PREFIX + pool in bundle:
                opts["resources"] = {ACCEL_PREFIX + pool: 0.001}
            refs.append(self._remote.options(**opts).remote(job.to_dict(), self.settings, attempt))
        return Attempt(pg, refs)

    async def wait_ready(self, attempt: Attempt) -> bool:
        return await asyncio.to_thread(attempt.pg.wait, PG_READY_TIMEOUT_S)

    async def wait(self, attempt: Attempt) -> dict[str, Any]:
        """Results of every rank; a crashed worker becomes exit code -1 with the error text."""
        results = []
        for ref in attempt.refs:
            try:
                results.append(await ref)
            except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ...
                results.append({"exit_code": -1, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        self.release(attempt)
        first_bad = next((r for r in results if r.get("exit_code")), None)
        return first_bad or results[0]

    def cancel(self, attempt: Attempt) -> None:
        for ref in attempt.refs:
            ray.cancel(ref, force=True)
        self.release(attempt)

    @staticmethod
    def release(attempt: Attempt) -> None:
        try:
            remove_placement_group(attempt.pg)
        except Exception:  # noqa: BLE001 - already removed
            pass
