"""Ray adapter (``ClusterExecutor``): discover GPU pools, start a job attempt as detached named placement group(s) with
one task per worker (submitted and owned by the detached launcher actor of the node the worker's
bundle was placed on, ``launcher.py``), check on it, and free it.

A gang attempt has one group with a bundle per worker (all-or-nothing); a gang=false attempt has
one single-bundle group per worker, each possibly of another GPU type, and each worker starts as
soon as its own group is placed.

Everything is named by job and attempt (``{instance}-{tenant}-{id}-a{attempt}``) and lives
apart from the scheduler process, so a scheduler that dies does not take running jobs with it,
its successor finds them by name (adoption), and launching twice starts nothing twice
(idempotent dispatch).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import ray
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pylon_services.runtime import ray_connect
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.snapshot import ClusterNode

ACCEL_PREFIX = "accelerator_type:"
PG_WAIT_S = 1.0
_WORKER_SUFFIX = re.compile(r"-w\d+$")


def _pool_of(resources: dict[str, float]) -> str:
    types = [k[len(ACCEL_PREFIX):] for k in resources if k.startswith(ACCEL_PREFIX)]
    return types[0] if types and resources.get("GPU", 0) > 0 else "cpu"


class RayExecutor:
    """The port's async methods run the blocking Ray calls on a thread (``asyncio.to_thread``)."""

    def __init__(self, address: str, settings: dict[str, Any], launcher_cls: type, node_ip_address: str = "",
                 instance: str = "pylon") -> None:
        """``launcher_cls``: the actor class each node runs (``worker.launcher.Launcher``),
        given by the wiring so this adapter does not import the worker's code."""
        self.instance = instance  # Ray namespace and name prefix: schedulers of two platforms never meet
        self.address = address
        self.node_ip_address = node_ip_address
        self.settings = settings
        self._launcher_cls = launcher_cls
        self._launchers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._nodes_cache: tuple[float, list[ClusterNode]] = (0.0, [])

    # --- the port (async) -----------------------------------------------------------------------

    async def nodes(self) -> list[ClusterNode]:
        return self.cached_nodes() or await asyncio.to_thread(self.list_nodes)

    async def launch(self, job: Job, wait_s: float = PG_WAIT_S) -> int:
        return await asyncio.to_thread(self.launch_now, job, wait_s)

    async def placed_nodes(self, job: Job) -> list[str] | None:
        return await asyncio.to_thread(self.placed_nodes_now, job)

    async def exists(self, job: Job) -> bool:
        return await asyncio.to_thread(self.exists_now, job)

    async def workers_alive(self, job: Job) -> tuple[str, dict[int, str]]:
        return await asyncio.to_thread(self.workers_alive_now, job)

    async def release(self, job: Job) -> None:
        await asyncio.to_thread(self.release_now, job)

    async def orphans(self, wanted: set[str]) -> list[str]:
        return await asyncio.to_thread(self.orphans_now, wanted)

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self.remove_by_name, name)

    async def request_scale(self, bundles: list[dict[str, float]]) -> None:
        await asyncio.to_thread(self.request_scale_now, bundles)

    # --- blocking implementation ----------------------------------------------------------------

    def connect(self) -> None:
        ray_connect.connect(self.address, self.instance, self.node_ip_address,
                            float(self.settings.get("ray_connect_timeout_s", 180.0)))
        for node in self.list_nodes(max_age_s=0.0):  # start every node's launcher now, not on its first job
            if node.alive:
                self._launcher_on(node.id)

    def _launcher_on(self, node_id: str) -> Any:
        """The launcher actor pinned to ``node_id`` (created on first use, found by name after a
        restart: it is detached and outlives schedulers)."""
        with self._lock:
            handle = self._launchers.get(node_id)
            if handle is None:
                handle = ray.remote(self._launcher_cls).options(
                    name=f"{self.instance}-launcher-{node_id}", namespace=self.instance, lifetime="detached",
                    get_if_exists=True, num_cpus=0, max_concurrency=32, max_restarts=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
                self._launchers[node_id] = handle
            return handle

    def _on_nodes(self, method: str, calls: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
        """Call ``method`` on the launchers of the given nodes in parallel; a launcher that is
        gone (its node died) answers None and is forgotten."""
        refs = {n: getattr(self._launcher_on(n), method).remote(*args) for n, args in calls.items()}
        out: dict[str, Any] = {}
        for node_id, ref in refs.items():
            try:
                out[node_id] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                with self._lock:
                    self._launchers.pop(node_id, None)
                out[node_id] = None
        return out

    @staticmethod
    def request_scale_now(bundles: list[dict[str, float]]) -> None:
        """Ask Ray's autoscaler (KubeRay's, on Kubernetes) to make room for ``bundles``; the
        request replaces the previous one and [] withdraws it. Without an autoscaler it is only
        recorded (``ray.autoscaler.sdk.request_resources``)."""
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)

    def attempt_name(self, job: Job, attempt: int | None = None) -> str:
        return f"{self.instance}-{job.tenant}-{job.id}-a{job.attempt if attempt is None else attempt}"

    def groups(self, job: Job, attempt: int | None = None) -> list[tuple[str, list[int]]]:
        """The attempt's placement groups as ``(name, ranks)``: one group holding every worker for
        a gang, one single-bundle group per worker (``<attempt>-w<rank>``) for gang=false."""
        name = self.attempt_name(job, attempt)
        if job.gang:
            return [(name, list(range(job.workers)))]
        return [(f"{name}-w{r}", [r]) for r in range(job.workers)]

    def cached_nodes(self, max_age_s: float = 1.0) -> list[ClusterNode] | None:
        """The node list if fetched within ``max_age_s`` (no GCS call, safe on the event loop)."""
        at, cached = self._nodes_cache
        return cached if time.monotonic() - at < max_age_s else None

    def list_nodes(self, max_age_s: float = 1.0) -> list[ClusterNode]:
        """All nodes Ray knows, alive or not (cached briefly: GCS calls are not free)."""
        at, cached = self._nodes_cache
        if time.monotonic() - at < max_age_s:
            return cached
        out = [ClusterNode(n["NodeID"], _pool_of(n["Resources"]), n["Resources"].get("GPU", 0.0),
                       n["Resources"].get("CPU", 0.0), n["Resources"].get("memory", 0.0), bool(n.get("Alive")))
               for n in ray.nodes()]
        self._nodes_cache = (time.monotonic(), out)
        return out

    @staticmethod
    def _bundle(job: Job, gpu_type: str) -> dict[str, float]:
        res = job.spec.resources
        bundle: dict[str, float] = {"CPU": res.cpus or 1.0}
        if res.gpus > 0:
            bundle["GPU"] = res.gpus
            bundle[ACCEL_PREFIX + gpu_type] = 0.001
        if res.memory_bytes > 0:
            bundle["memory"] = float(res.memory_bytes)
        return bundle

    @staticmethod
    def _task_options(bundle: dict[str, float]) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0)}
        extra = {k: v for k, v in bundle.items() if k.startswith(ACCEL_PREFIX)}
        if extra:
            opts["resources"] = extra
        if "memory" in bundle:
            opts["memory"] = bundle["memory"]
        return opts

    def launch_now(self, job: Job, wait_s: float = PG_WAIT_S) -> int:
        """Create the attempt's placement group(s) unless they exist, and have the launcher of
        each placed bundle's node start that worker's task unless it already runs (a repeated
        launch starts nothing twice). Waits at most ``wait_s`` for the groups to be placed: a task
        submitted to a group not yet placed waits for Ray's lease retry (0.5-1 s). A worker whose
        bundle is not placed yet is started by a later call (``Attempts`` calls again while the
        job is STARTING), so each gang=false worker starts as soon as its own bundle is ready.
        Returns how many workers run or were started."""
        strategy = "SPREAD" if job.spec.placement == "spread" else "PACK"
        groups = []
        for pg_name, ranks in self.groups(job):
            try:
                pg = get_placement_group(pg_name)
            except ValueError:
                pg = placement_group([self._bundle(job, job.worker_gpu_type(r)) for r in ranks], strategy=strategy,
                                     name=pg_name, lifetime="detached")
            groups.append((pg, pg_name, ranks))
        deadline = time.monotonic() + wait_s
        calls: dict[str, list[tuple[int, Any, int, dict[str, Any]]]] = {}
        placed = 0
        for pg, pg_name, ranks in groups:
            nodes = self._wait_placed(pg, pg_name, deadline)
            if nodes is None:
                continue
            for i, rank in enumerate(ranks):
                opts = self._task_options(self._bundle(job, job.worker_gpu_type(rank)))
                calls.setdefault(nodes[i], []).append((rank, pg, i, opts))
                placed += 1
        self._on_nodes("launch", {n: (self.attempt_name(job), job.to_dict(), self.settings, w)
                                     for n, w in calls.items()})
        return placed

    @staticmethod
    def _pg_nodes(pg_name: str) -> list[str] | None:
        """Node id of each bundle of a created group; None while it is missing or not placed."""
        try:
            pg = get_placement_group(pg_name)
        except ValueError:
            return None
        table = ray.util.placement_group_table(pg)
        if table.get("state") != "CREATED":
            return None
        by_index = table.get("bundles_to_node_id", {})
        return [by_index.get(i, "") for i in range(len(table.get("bundles", by_index)))]

    def _wait_placed(self, pg: Any, pg_name: str, deadline: float) -> list[str] | None:
        """The group's bundle nodes once placed, waiting until ``deadline`` (monotonic) at most.
        ``pg.wait`` can return before the GCS table shows the group CREATED with its nodes, so
        the table is polled briefly after it: missing that window cost a whole scheduler turn
        (~0.6 s) in half the launches of ``benchmarks/sched_launch_overhead.py``."""
        nodes = self._pg_nodes(pg_name)
        while nodes is None and (left := deadline - time.monotonic()) > 0:
            pg.wait(timeout_seconds=left)
            nodes = self._pg_nodes(pg_name)
            if nodes is None:
                time.sleep(0.002)
        return nodes

    def placed_nodes_now(self, job: Job) -> list[str] | None:
        """Node id of each worker (by rank) once every group of the attempt is placed, else None."""
        out = [""] * job.workers
        for pg_name, ranks in self.groups(job):
            nodes = self._pg_nodes(pg_name)
            if nodes is None:
                return None
            for i, rank in enumerate(ranks):
                out[rank] = nodes[i]
        return out

    def exists_now(self, job: Job) -> bool:
        """Whether every placement group of the attempt is still there (launched, not released)."""
        for pg_name, _ in self.groups(job):
            try:
                get_placement_group(pg_name)
            except ValueError:
                return False
        return True

    def workers_alive_now(self, job: Job) -> tuple[str, dict[int, str]]:
        """Whether every worker task of the current attempt runs (or ended normally), as
        ``(why not, crashed)``: ``why not`` is "" while each rank was started by the launcher of
        its bundle's node and none crashed; ``crashed`` maps the rank of each task whose worker
        process died to Ray's error."""
        nodes = self.placed_nodes_now(job)
        if nodes is None:
            return "its placement group is not placed", {}
        answers = self._on_nodes("alive", {n: (self.attempt_name(job),) for n in set(nodes)})
        if gone := [n for n, a in answers.items() if a is None]:
            return f"the launcher of node {gone[0][:12]} is gone", {}
        started: set[int] = set()
        crashed: dict[int, str] = {}
        for a in answers.values():
            started.update(a["ranks"])
            crashed.update({int(r): e for r, e in a["crashed"].items()})
        if crashed:
            return f"worker {min(crashed)} crashed", crashed
        if missing := sorted(set(range(job.workers)) - started):
            return f"worker {missing[0]} was never started on its node", {}
        return "", {}

    def release_now(self, job: Job, attempt: int | None = None) -> None:
        """Kill the attempt's workers and remove its placement group(s) (idempotent)."""
        name = self.attempt_name(job, attempt)
        groups = self.groups(job, attempt)
        nodes = {n for pg_name, _ in groups for n in (self._pg_nodes(pg_name) or ())}
        self._on_nodes("stop", {n: (name,) for n in nodes if n})
        for pg_name, _ in groups:
            self.remove_by_name(pg_name)

    def orphans_now(self, wanted: set[str]) -> list[str]:
        """Names of Pylon placement groups Ray holds that no active attempt in ``wanted`` owns
        (a gang=false worker's group ``<attempt>-w<rank>`` belongs to ``<attempt>``)."""
        out = []
        for info in ray.util.placement_group_table().values():
            name = info.get("name", "")
            owner = _WORKER_SUFFIX.sub("", name)
            if name.startswith(f"{self.instance}-") and info.get("state") != "REMOVED" and owner not in wanted:
                out.append(name)
        return out

    @staticmethod
    def remove_by_name(name: str) -> None:
        try:
            remove_placement_group(get_placement_group(name))
        except ValueError:
            pass
