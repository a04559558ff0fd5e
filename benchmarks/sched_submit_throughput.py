"""Claim: SubmitJob through the full scheduler (gRPC runtime, auth, validation against the live Ray
cluster view, idempotent create in Redis, dispatch-stream event, a leader running passes over the
growing backlog) accepts >= 0.33x the requests/s of the foundation's bare grpc.aio server
(``rpc_overhead.py``'s trivial servicer), both driven by 8 concurrent clients in the same run.

The scheduler runs as its two processes, the API (``python -m pylon_services.scheduler``) and
the leader (``python -m pylon_services.scheduler.leader``), against a real Redis (AOF, fsync
every second) and a real Ray cluster with one fake V100 node. Every job asks
for a V100 in a queue whose V100 quota is 0, so all stay PENDING: the leader's passes keep
explaining an ever larger backlog while submissions go on, which is the load we want to price.
Prints jobs/s per round, the medians and the ratio. Not a test: it never fails on the figures.

    .venv/bin/python benchmarks/sched_submit_throughput.py --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from rpc_overhead import serve_in_subprocess  # noqa: E402 - the foundation's bare server

from pylon.engine.v1 import engine_pb2, engine_pb2_grpc  # noqa: E402
from pylon.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402

ADMIN_KEY = "pyl_admin_bench-bootstrap-key"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError):
        return 0.0


async def drive(address: str, make_call: Any, seconds: float, concurrency: int) -> tuple[int, int, float]:
    """``concurrency`` callers for ``seconds``; returns (ok, errors, wall seconds)."""
    channel = grpc.aio.insecure_channel(address)
    await channel.channel_ready()
    call = make_call(channel)
    ok = errors = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal ok, errors
        while time.perf_counter() < deadline:
            try:
                await call()
                ok += 1
            except grpc.aio.AioRpcError as e:
                errors += 1
                if errors == 1:
                    print(f"  first error: {e.code().name}: {e.details()}", flush=True)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await channel.close()
    return ok, errors, wall


def bare_call(channel: grpc.aio.Channel) -> Any:
    stub = engine_pb2_grpc.EngineServiceStub(channel)
    req = engine_pb2.GetEngineInfoRequest()
    return lambda: stub.GetEngineInfo(req, timeout=10)


def submit_call(channel: grpc.aio.Channel) -> Any:
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    md = (("authorization", f"Bearer {ADMIN_KEY}"),)
    spec = scheduler_pb2.JobSpec(queue="bench", command=scheduler_pb2.Command(argv=["true"]),
                                 resources=scheduler_pb2.WorkerResources(gpus=1, gpu_types=["V100"]))

    def call() -> Any:
        req = scheduler_pb2.SubmitJobRequest(parent="tenants/bench", spec=spec, request_id=uuid.uuid4().hex)
        return stub.SubmitJob(req, metadata=md, timeout=10)

    return call


def start_scheduler(tmp: str, redis_url: str, ray_address: str) -> tuple[list[subprocess.Popen[bytes]], str]:
    """The API and the leader; returns both processes and the API's address."""
    from pylon_services.localstack.procs import free_port

    port = free_port()
    env = {**os.environ, "PYLON_REDIS_URL": redis_url, "PYLON_RAY_ADDRESS": ray_address, "PYLON_PORT": str(port),
           "PYLON_RAY_NODE_IP_ADDRESS": "127.0.0.1", "PYLON_METRICS_PORT": "-1", "PYLON_ADMIN_KEY": ADMIN_KEY,
           "PYLON_OBJECT_STORE_URL": f"file://{tmp}/objects", "PYLON_SCHED_INSTANCE": "pylonbench",
           # The backlog grows past the default per-tenant pending limit (10,000) on purpose; a
           # limit it never reaches keeps the check's cost in the price.
           "PYLON_SCHED_MAX_PENDING_PER_TENANT": "10000000"}
    procs = []
    for module in ("pylon_services.scheduler", "pylon_services.scheduler.leader"):
        log = open(os.path.join(tmp, f"{module}.log"), "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    return procs, f"127.0.0.1:{port}"


async def prepare(address: str) -> None:
    """Wait for the scheduler (a leader published the cluster), then declare the zero-quota queue
    every job goes to."""
    channel = grpc.aio.insecure_channel(address)
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    md = (("authorization", f"Bearer {ADMIN_KEY}"),)
    for _ in range(240):
        try:
            await stub.GetCluster(scheduler_pb2.GetClusterRequest(), metadata=md, timeout=5)
            await stub.CreateQueue(scheduler_pb2.CreateQueueRequest(
                parent="tenants/bench", queue_id="bench", queue=scheduler_pb2.Queue(nominal_gpus={"V100": 0})),
                metadata=md, timeout=5)
            break
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                break
            await asyncio.sleep(0.5)
    await channel.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    from pylon_services.localstack.ray_head import LOCAL_RAY_ENV

    os.environ.update(LOCAL_RAY_ENV)  # keep Ray on loopback (see localstack/ray_head.py)
    from ray.cluster_utils import Cluster

    from pylon_services.localstack.redis_server import RedisServer

    tmp = tempfile.mkdtemp(prefix="sched-bench-")
    redis = RedisServer(os.path.join(tmp, "redis")).start()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                           "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:V100": 1}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    parent, child = mp.Pipe()
    bare = mp.get_context("spawn").Process(target=serve_in_subprocess, args=("bare", child, "", "", ""))
    bare.start()
    bare_addr = f"127.0.0.1:{parent.recv()}"
    (api, leader), sched_addr = start_scheduler(tmp, redis.url, cluster.address)
    try:
        asyncio.run(prepare(sched_addr))
        rates: dict[str, list[float]] = {"bare": [], "submit": []}
        # In bare rounds the scheduler still runs (its leader keeps the backlog of earlier rounds):
        # its CPU then is printed too, as "sched", since it competes with the bare server.
        procs = {"bare": {"server": [bare.pid], "sched": [api.pid, leader.pid]},
                 "submit": {"api": [api.pid], "leader": [leader.pid]}}
        for rnd in range(args.rounds):
            for mode, addr, make in (("bare", bare_addr, bare_call), ("submit", sched_addr, submit_call)):
                watched = {**procs[mode], "redis": [redis.proc.pid]}
                before = ({k: sum(map(cpu_s, v)) for k, v in watched.items()}, time.process_time())
                ok, errors, wall = asyncio.run(drive(addr, make, args.seconds, args.concurrency))
                used = {k: sum(map(cpu_s, v)) - before[0][k] for k, v in watched.items()}
                used["client"] = time.process_time() - before[1]
                rates[mode].append(ok / wall)
                where = ", ".join(f"{k} {1e6 * v / max(ok, 1):.0f}" for k, v in used.items())
                print(f"round {rnd} {mode:6s}: {ok / wall:8.1f} req/s ({ok} ok, {errors} errors); "
                      f"CPU us per request: {where}", flush=True)
        b, s = statistics.median(rates["bare"]), statistics.median(rates["submit"])
        ratios = [round(x / y, 3) for x, y in zip(rates["submit"], rates["bare"], strict=True)]
        print(f"ratios per round: {ratios}")
        print(f"median bare rpc: {b:.1f} req/s; median SubmitJob: {s:.1f} jobs/s; ratio {s / b:.3f} (target >= 0.33)")
        print(f"load average: {os.getloadavg()}")
    finally:
        parent.send("stop")
        bare.join(10)
        for proc in (api, leader):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        cluster.shutdown()
        redis.stop()


if __name__ == "__main__":
    main()
