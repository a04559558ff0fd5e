"""Claim: the full Pylon runtime (auth, JSON logs, metrics, error mapping) keeps >= 70% of a bare
grpc.aio server's small unary RPC throughput.

Both servers serve the same trivial ``EngineService.GetEngineInfo`` servicer, each in its own
process; the load generator (grpc.aio client, C concurrent coroutines) runs in this process and
alternates bare/full for R rounds. The full server authenticates a real (stored, non-bootstrap)
API key through Redis and its per-process cache, and logs one JSON line per call to a file, as in
production. Prints median requests/s, p50/p99 latency, server CPU per request and the ratio
full/bare. Not a test: it prints figures and never fails on them.

    .venv/bin/python benchmarks/rpc_overhead.py --seconds 5 --concurrency 32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc

from pylon.engine.v1 import engine_pb2, engine_pb2_grpc

SERVICE_NAME = "pylon.engine.v1.EngineService"
_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.so_reuseport", 0)]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class ConstantEngine(engine_pb2_grpc.EngineServiceServicer):
    """The cheapest possible servicer, so the figure is the per-call cost of the server stack."""

    _RESPONSE = engine_pb2.GetEngineInfoResponse(model_version="bench/models/m/versions/1", engine="echo",
                                                 device="cpu", max_batch_size=8)

    async def GetEngineInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._RESPONSE


# --- server processes --------------------------------------------------------------------------

async def _bare_server() -> tuple[Any, int]:
    server = grpc.aio.server(options=_OPTIONS)
    engine_pb2_grpc.add_EngineServiceServicer_to_server(ConstantEngine(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _full_server(redis_url: str, admin_key: str, log_path: str) -> tuple[Any, int]:
    import redis.asyncio as aioredis

    from pylon_services.runtime.jsonlog import setup_logging
    from pylon_services.runtime.server import PylonServer, ServiceParts
    from pylon_services.runtime.settings import Settings

    # Production services log JSON to stderr, which `pylon up` and containers send to a file.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    setup_logging("bench", "INFO")
    redis = aioredis.from_url(redis_url)
    parts = ServiceParts(name="bench", servicers=[
        (engine_pb2_grpc.add_EngineServiceServicer_to_server, ConstantEngine(), SERVICE_NAME)])
    server = PylonServer(Settings(port=0, metrics_port=-1, admin_key=admin_key, redis_url=redis_url), redis, parts)
    port = await server.start()
    return server, port


def serve_in_subprocess(mode: str, conn: Connection, redis_url: str, admin_key: str, log_path: str) -> None:
    """Entry point of a server process: report the port, serve until the parent says stop."""

    async def run() -> None:
        if mode == "bare":
            server, port = await _bare_server()
        else:
            server, port = await _full_server(redis_url, admin_key, log_path)
        conn.send(port)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # blocks a helper thread, not the event loop
        await server.stop(1.0)

    asyncio.run(run())


# --- load generator ----------------------------------------------------------------------------

@dataclass
class RoundResult:
    mode: str
    round: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_req: float
    load_avg_1m: float


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


async def _drive(address: str, metadata: tuple[tuple[str, str], ...], seconds: float, concurrency: int,
                 channels: int) -> tuple[list[float], int, float]:
    """Run ``concurrency`` callers for ``seconds``; returns latencies (s), error count and wall time."""
    chans = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [engine_pb2_grpc.EngineServiceStub(ch) for ch in chans]
    request = engine_pb2.GetEngineInfoRequest()
    latencies: list[float] = []
    errors = 0
    deadline = 0.0  # set once the channels are connected

    async def caller(i: int) -> None:
        nonlocal errors
        call = stubs[i % len(stubs)].GetEngineInfo
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            try:
                await call(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    for ch in chans:
        await ch.channel_ready()
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    wall = time.perf_counter() - start
    for ch in chans:
        await ch.close()
    return latencies, errors, wall


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def measure(mode: str, rnd: int, address: str, pid: int, metadata: tuple[tuple[str, str], ...],
                  args: argparse.Namespace) -> RoundResult:
    await _drive(address, metadata, args.warmup, args.concurrency, args.channels)
    cpu0 = _cpu_seconds(pid)
    latencies, errors, wall = await _drive(address, metadata, args.seconds, args.concurrency, args.channels)
    cpu = _cpu_seconds(pid) - cpu0
    latencies.sort()
    n = len(latencies)
    return RoundResult(mode=mode, round=rnd, requests=n, errors=errors, seconds=round(wall, 3),
                       rps=round(n / wall, 1), p50_ms=round(_percentile(latencies, 0.50) * 1000, 3),
                       p99_ms=round(_percentile(latencies, 0.99) * 1000, 3),
                       server_cpu_us_per_req=round(cpu / max(n, 1) * 1e6, 1),
                       load_avg_1m=round(os.getloadavg()[0], 2))


async def run_rounds(targets: dict[str, tuple[str, int]], metadata: tuple[tuple[str, str], ...],
                     args: argparse.Namespace) -> list[RoundResult]:
    """Alternate bare/full so slow drifts in machine load hit both alike."""
    results = []
    for rnd in range(1, args.rounds + 1):
        for mode in ("bare", "full"):
            address, pid = targets[mode]
            results.append(await measure(mode, rnd, address, pid, metadata, args))
    return results


# --- orchestration -----------------------------------------------------------------------------

async def _create_key(redis_url: str) -> str:
    import redis.asyncio as aioredis

    from pylon_services.runtime.auth import ApiKeyStore

    redis = aioredis.from_url(redis_url)
    try:
        _, token = await ApiKeyStore(redis).create("bench", "editor", "rpc_overhead benchmark")
    finally:
        await redis.aclose()
    return token


def _start_server(ctx: Any, mode: str, redis_url: str, admin_key: str, log_path: str) -> tuple[Any, Connection, int]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_in_subprocess, args=(mode, child, redis_url, admin_key, log_path),
                       name=f"rpc-bench-{mode}", daemon=True)
    proc.start()
    if not parent.poll(60):
        proc.kill()
        raise RuntimeError(f"the {mode} server did not start within 60s")
    return proc, parent, int(parent.recv())


def _summary(results: list[RoundResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("bare", "full"):
        rs = [r for r in results if r.mode == mode]
        out[mode] = {"median_rps": round(statistics.median(r.rps for r in rs), 1),
                     "median_p50_ms": round(statistics.median(r.p50_ms for r in rs), 3),
                     "median_p99_ms": round(statistics.median(r.p99_ms for r in rs), 3),
                     "median_server_cpu_us_per_req": round(statistics.median(r.server_cpu_us_per_req for r in rs), 1),
                     "errors": sum(r.errors for r in rs)}
    out["ratio_full_over_bare"] = round(out["full"]["median_rps"] / out["bare"]["median_rps"], 3)
    out["server_cpu_ratio_bare_over_full"] = round(
        out["bare"]["median_server_cpu_us_per_req"] / out["full"]["median_server_cpu_us_per_req"], 3)
    return out


def _print_table(results: list[RoundResult], summary: dict[str, Any], args: argparse.Namespace,
                 log_lines: int, load_before: list[float]) -> None:
    print(f"rpc_overhead: GetEngineInfo, {args.seconds}s x {args.rounds} rounds per server, concurrency "
          f"{args.concurrency} over {args.channels} channel(s), {os.cpu_count()} CPUs")
    print(f"load average before start (1/5/15 min): {load_before}; 'load1' below includes this benchmark")
    print(f"{'mode':<5} {'round':>5} {'requests':>9} {'err':>4} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'srv CPU us/req':>14} {'load1':>6}")
    for r in results:
        print(f"{r.mode:<5} {r.round:>5} {r.requests:>9} {r.errors:>4} {r.rps:>9.1f} {r.p50_ms:>8.3f} "
              f"{r.p99_ms:>8.3f} {r.server_cpu_us_per_req:>14.1f} {r.load_avg_1m:>6.2f}")
    print()
    for mode in ("bare", "full"):
        s = summary[mode]
        print(f"{mode:<5} median rps {s['median_rps']:>9.1f}   p50 {s['median_p50_ms']:.3f} ms   "
              f"p99 {s['median_p99_ms']:.3f} ms   server CPU {s['median_server_cpu_us_per_req']:.1f} us/req")
    print(f"ratio full/bare (rps): {summary['ratio_full_over_bare']:.3f}  (target >= 0.70)")
    print(f"ratio bare/full (server CPU per request): {summary['server_cpu_ratio_bare_over_full']:.3f}")
    print(f"full server wrote {log_lines} JSON request log lines (warm-up included)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round and server")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each round")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent in-flight calls")
    p.add_argument("--channels", type=int, default=2, help="client channels the callers share")
    p.add_argument("--rounds", type=int, default=3, help="bare/full alternations")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before anything starts: the machine's load from others. The per-round figure includes this
    # benchmark's own client and server (about 2 runnable processes).
    load_before = [round(x, 2) for x in os.getloadavg()]
    from pylon_services.localstack.redis_server import RedisServer

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="pylon-rpcbench-") as tmp:
        redis_server = RedisServer(os.path.join(tmp, "redis")).start()
        servers: dict[str, tuple[Any, Connection, int]] = {}
        log_path = os.path.join(tmp, "full-server.log")
        try:
            token = asyncio.run(_create_key(redis_server.url))
            admin_key = "pyl_admin_" + os.urandom(12).hex()  # configured, but the benchmark uses the stored key
            for mode in ("bare", "full"):
                servers[mode] = _start_server(ctx, mode, redis_server.url, admin_key, log_path)
            metadata = (("authorization", f"Bearer {token}"),)
            targets = {mode: (f"127.0.0.1:{port}", proc.pid) for mode, (proc, _, port) in servers.items()}
            results = asyncio.run(run_rounds(targets, metadata, args))
        finally:
            for proc, conn, _ in servers.values():
                conn.send("stop")
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            redis_server.stop()
        with open(log_path) as f:
            log_lines = sum(1 for line in f if line.startswith("{") and json.loads(line).get("msg") == "rpc")
    summary = _summary(results)
    if args.json:
        print(json.dumps({"config": vars(args), "cpus": os.cpu_count(), "load_average_before": load_before,
                          "rounds": [asdict(r) for r in results],
                          "summary": summary, "full_server_rpc_log_lines": log_lines}, indent=2))
    else:
        _print_table(results, summary, args, log_lines, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
