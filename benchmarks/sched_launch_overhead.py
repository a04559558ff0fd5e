"""Claim: from admission to the first line of user code on Ray, the scheduler takes <= 2x what a
direct ``ray.remote`` call with the same placement group takes.

Ours: the scheduler (its API and leader processes, real Redis, a Ray cluster with one fake V100
node) admits a 1-worker V100 job whose command prints a line; the figure is that
line's log timestamp minus the job's ``admit_time`` in the ledger. It covers the ledger writes,
the named detached placement group, the worker task submitted by the launcher actor of the
bundle's node, the flag watcher, checkpoint restore and the subprocess, as production does.
Baseline: in this process, create a placement group with the same bundle, wait for it, and run
the same command from a ``ray.remote`` task in it; the figure is the task's first-line time
minus the moment before ``placement_group()``. Jobs run one at a time, alternating; medians.
Before each measured launch the script waits until Ray shows the GPU free (see ``settle``).

    .venv/bin/python benchmarks/sched_launch_overhead.py --runs 9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from sched_submit_throughput import ADMIN_KEY, start_scheduler  # noqa: E402

ARGV = [sys.executable, "-c", "print('USER-FIRST-LINE', flush=True)"]
BUNDLE = {"CPU": 1.0, "GPU": 1.0, "accelerator_type:V100": 0.001}


def first_line_task() -> float:
    """The baseline's user code: the same subprocess; returns when its first line arrived."""
    proc = subprocess.Popen(ARGV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    t = time.time()
    proc.wait()
    return t


def baseline_once(remote_fn: Any) -> float:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    t0 = time.time()
    pg = placement_group([dict(BUNDLE)], strategy="PACK")
    ray.get(pg.ready())
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    t1 = ray.get(remote_fn.options(num_cpus=1, num_gpus=1, resources={"accelerator_type:V100": 0.001},
                                   scheduling_strategy=strategy).remote())
    remove_placement_group(pg)
    return t1 - t0


def settle(timeout_s: float = 10.0) -> None:
    """Wait until Ray shows the GPU free again before a measured launch (both sides). Removing a
    placement group returns its resources asynchronously; a group created before that is retried
    by the GCS with back-off (up to 1 s), which would price the previous run's teardown, not this
    launch, and hit whichever side happened to start right after the other's removal."""
    import ray

    deadline = time.time() + timeout_s
    while ray.available_resources().get("GPU", 0.0) < 1.0 and time.time() < deadline:
        time.sleep(0.02)


def ours_once(client: Any, redis: Any) -> float:
    job = client.jobs.submit({"resources": {"gpus": 1, "gpu_types": ["V100"]}, "command": {"argv": ARGV}})
    job = client.jobs.wait(job.name, timeout=120)
    assert job.state == "succeeded", job.message
    tenant, _, job_id = job.name.split("/")[1:]
    doc = json.loads(redis.get(f"pylon:job:{tenant}:{job_id}"))
    lines = [json.loads(x) for x in redis.lrange(f"pylon:joblog:{tenant}:{job_id}", 0, -1)]
    first = next(x["t"] for x in lines if x["text"] == "USER-FIRST-LINE")
    started, text = next((x["t"], x["text"]) for x in lines if x["text"].startswith("attempt "))
    pid = text.split("(pid ")[1].split(",")[0]  # the same pid as the previous job = a reused warm worker
    print(f"  scheduler breakdown: admission -> worker task running {(started - doc['admit_time']) * 1000:.0f} ms "
          f"(worker pid {pid}), -> user's first line {(first - started) * 1000:.0f} ms", flush=True)
    return first - doc["admit_time"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from pylon_services.localstack.ray_head import LOCAL_RAY_ENV

    os.environ.update(LOCAL_RAY_ENV)
    import ray
    import redis as redis_lib
    from ray.cluster_utils import Cluster

    import pylon
    from pylon_services.localstack.redis_server import RedisServer

    tmp = tempfile.mkdtemp(prefix="sched-launch-")
    rs = RedisServer(os.path.join(tmp, "redis")).start()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                           "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=2, num_gpus=1, resources={"accelerator_type:V100": 1}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="bench", log_to_driver=False)
    remote_fn = ray.remote(first_line_task)
    sched, addr = start_scheduler(tmp, rs.url, cluster.address)  # [API, leader]
    r = redis_lib.Redis.from_url(rs.url)
    try:
        client = pylon.Client(addr, ADMIN_KEY)
        for _ in range(120):
            try:
                client.jobs.cluster()
                break
            except Exception:  # noqa: BLE001 - still starting
                time.sleep(0.5)
        ours_once(client, r), baseline_once(remote_fn)  # warm both paths (worker processes, imports)
        ours, base = [], []
        for i in range(args.runs):
            settle()
            base.append(baseline_once(remote_fn))
            settle()
            ours.append(ours_once(client, r))
            print(f"run {i}: direct ray.remote {base[-1] * 1000:7.1f} ms   scheduler {ours[-1] * 1000:7.1f} ms", flush=True)
        b, o = statistics.median(base), statistics.median(ours)
        print(f"median direct ray.remote: {b * 1000:.1f} ms; median admission -> first line: {o * 1000:.1f} ms; "
              f"ratio {o / b:.2f} (target <= 2)")
    finally:
        for proc in sched:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        ray.shutdown()
        cluster.shutdown()
        rs.stop()
    asyncio.set_event_loop(None)


if __name__ == "__main__":
    main()
