"""Claims: (1) the gateway adds at most 1 ms to a request's p50 latency and keeps >= 0.8x the
throughput of calling the engine replica directly, over gRPC and over HTTP (a bare grpc.aio relay
is measured beside it: the floor of any Python gRPC hop on the machine); (2) on a shared-prefix
workload over two replicas whose KV caches cannot each hold every prefix, prefix-affinity routing
gives >= 30% better TTFT (p50 and p90) than round-robin at the same arrival rate.

Real parts: a Redis server, engine replicas (the torch engine, a random-weight Llama, each its own
process, heartbeating into Redis as on Ray) and the gateway (``python -m pylon_services.gateway``,
its own process); the deployment record is written into Redis directly, so no scheduler or Ray is
needed. The load comes from ``pylon.loadgen`` (``benchmarks/serve_bench.py``) in this process.

    python benchmarks/gateway_routing.py [--overhead-prompts 200] [--prefix-prompts 96] [--rate 6] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ADMIN_KEY = "pyl_admin_bench-key"
TENANT = "admin"  # the bootstrap admin key's tenant


def replica_main(model_dir: str, deployment: str, job_id: str, redis_url: str, config: str) -> None:
    """One engine replica as ``engines/replica.py`` serves it on Ray, without the scheduler job."""
    import torch

    from pylon_services.engines.queue_limits import QueueLimits
    from pylon_services.engines.replica import _serve_engine, load_engine, warm_up
    from pylon_services.runtime.loop import run as run_loop
    from pylon_services.runtime.settings import Settings

    torch.set_num_threads(1)

    class Ctx:
        settings = Settings(admin_key=ADMIN_KEY, redis_url=redis_url)
        workload = {"model_version": f"tenants/{TENANT}/models/m/versions/1"}

        def __init__(self) -> None:
            self.job_id = job_id

        def log(self, line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        def stop_requested(self) -> bool:
            return False

        def preempt_requested(self) -> bool:
            return False

    async def serve() -> None:
        cfg = json.loads(config)
        limits = QueueLimits.pop_from(cfg)
        engine = load_engine("torch", model_dir, cfg)
        await warm_up(engine)
        await _serve_engine(Ctx(), engine, limits, TENANT, deployment, "127.0.0.1")  # type: ignore[arg-type]

    run_loop(serve())


def relay_main(port: str, engine_address: str) -> None:
    """The floor of any Python gRPC hop: a bare grpc.aio server relaying EngineService.Generate to
    one replica, with nothing else (no auth, admission, routing, metrics or logs)."""
    import grpc

    from pylon.engine.v1 import engine_pb2_grpc
    from pylon_services.runtime.loop import run as run_loop

    async def serve() -> None:
        stub = engine_pb2_grpc.EngineServiceStub(grpc.aio.insecure_channel(engine_address))

        class Relay(engine_pb2_grpc.EngineServiceServicer):
            async def Generate(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
                async for response in stub.Generate(request, metadata=context.invocation_metadata()):
                    yield response

        server = grpc.aio.server()
        engine_pb2_grpc.add_EngineServiceServicer_to_server(Relay(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    run_loop(serve())


class Bench:
    """Redis, replicas and a gateway for one deployment; ``stop`` ends them all."""

    def __init__(self, workdir: Path) -> None:
        from pylon_services.localstack.redis_server import RedisServer

        self.dir = workdir
        self.redis = RedisServer(str(workdir / "redis")).start()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(workdir / "procs.log", "ab")  # noqa: SIM115 - closed in stop

    def _spawn(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **(env or {})}, stdout=self.log,
                                stderr=self.log)
        self.procs.append(proc)
        return proc

    def replicas(self, model_dir: Path, deployment: str, count: int, config: dict[str, Any]) -> list[str]:
        """Start ``count`` replicas; their registrations' addresses once all heartbeat."""
        import redis

        for i in range(count):
            self._spawn([__file__, "--replica", str(model_dir), deployment, f"r{i}", self.redis.url, json.dumps(config)])
        r = redis.Redis.from_url(self.redis.url)
        key = f"pylon:replicas:{TENANT}:{deployment}"
        deadline = time.monotonic() + 180
        while r.hlen(key) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas did not register; see {self.dir / 'procs.log'}")
            time.sleep(0.2)
        return [json.loads(v)["address"] for _, v in sorted(r.hgetall(key).items())]

    def record(self, deployment: str, count: int) -> str:
        """The deployment's record, its slots holding the replicas' job ids."""
        from redis.asyncio import Redis

        from pylon_services.gateway.domain import deployments as records
        from pylon_services.gateway.store.deployments import DeploymentStore

        async def write() -> None:
            r = Redis.from_url(self.redis.url)
            rec = records.new_record(f"tenants/{TENANT}/deployments/{deployment}", deployment[:10], count,
                                     model_version=f"tenants/{TENANT}/models/m/versions/1")
            rec = records.record_jobs(rec, {i: f"tenants/{TENANT}/jobs/r{i}" for i in range(count)})
            await DeploymentStore(r).create(rec)
            await r.aclose()

        asyncio.run(write())
        return f"tenants/{TENANT}/deployments/{deployment}"

    def gateway(self, policy: str) -> tuple[str, str]:
        """A gateway process with routing ``policy``: (gRPC address, HTTP base URL)."""
        from pylon_services.localstack.procs import free_ports

        grpc_port, http_port = free_ports(2)
        self._spawn(["-m", "pylon_services.gateway"], settings_env(
            redis_url=self.redis.url, admin_key=ADMIN_KEY, port=grpc_port, gateway_http_port=http_port,
            metrics_port=-1, gateway_routing_policy=policy, log_level="WARNING"))
        wait_port(grpc_port)
        wait_port(http_port)
        return f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/v1"

    def relay(self, engine_address: str) -> str:
        """A bare gRPC relay process (``relay_main``) in front of one replica: its address."""
        from pylon_services.localstack.procs import free_ports

        (port,) = free_ports(1)
        self._spawn([__file__, "--relay", str(port), engine_address])
        wait_port(port)
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.redis.stop()
        self.log.close()


def settings_env(**values: Any) -> dict[str, str]:
    return {f"PYLON_{k.upper()}": str(v) for k, v in values.items()}


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def _load(target: Any, workload: Any, rate: float = float("inf"), concurrency: int = 0) -> dict[str, Any]:
    from pylon.loadgen import run

    summary = asyncio.run(run(target, workload, rate, concurrency))
    summary.pop("results")
    return summary


def paired_latency(targets: dict[str, Any], pairs: int, max_tokens: int) -> dict[str, dict[str, list[float]]]:
    """TTFT and end-to-end ms of one request at a time, the targets taking turns request by
    request (in a rotating order, each request its own prompt), so that drift in the machine's
    load falls on every target alike instead of on whichever round it hit."""
    from pylon.loadgen import Workload, sender, timed

    kinds = list(targets)
    prompts = Workload(num_prompts=pairs * len(kinds), prompt_words=32, max_tokens=max_tokens, seed=7).prompts()

    async def go() -> dict[str, dict[str, list[float]]]:
        sends = {k: sender(t, max_tokens) for k, t in targets.items()}
        out: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "e2e": []} for k in kinds}
        for i in range(pairs):
            order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
            for j, kind in enumerate(order):
                r = await timed(sends[kind](prompts[i * len(kinds) + j], "", i))
                if not r.ok:
                    raise RuntimeError(f"{kind}: {r.error}")
                out[kind]["ttft"].append(r.ttft * 1000)
                out[kind]["e2e"].append(r.e2e * 1000)
        return out

    return asyncio.run(go())


def _p50(values: list[float]) -> float:
    return float(sorted(values)[len(values) // 2])


def overhead(bench: Bench, model_dir: Path, prompts: int, rounds: int) -> dict[str, Any]:
    """Added latency: ``prompts`` requests of 8 tokens per target, one at a time and interleaved
    (``paired_latency``); the p50 TTFT and end-to-end latency of each, less the engine's called
    directly, and the p50 of the per-request differences. A bare grpc.aio relay (``relay_main``) is
    measured alongside as the floor of any Python gRPC hop on the machine. Throughput: output
    tokens/s with 16 in flight, in ``rounds`` interleaved rounds."""
    from pylon.loadgen import Target, Workload
    from pylon_services.runtime.settings import Settings

    (address,) = bench.replicas(model_dir, "overhead", 1, {"max_num_seqs": 32})
    name = bench.record("overhead", 1)
    grpc_address, http_base = bench.gateway("prefix")
    key = Settings(admin_key=ADMIN_KEY).internal_key
    targets = {"engine": Target("engine", address, key),
               "bare_relay": Target("engine", bench.relay(address), key),
               "grpc": Target("grpc", grpc_address, ADMIN_KEY, name),
               "http": Target("http", http_base, ADMIN_KEY, "overhead")}
    for t in targets.values():  # warm every path (channels, connections, caches)
        _load(t, Workload(num_prompts=8, max_tokens=4), concurrency=1)
    lat = paired_latency(targets, prompts, max_tokens=8)
    tok_s: dict[str, list[float]] = {k: [] for k in targets}
    for r in range(rounds):
        for kind, t in targets.items():
            load = _load(t, Workload(num_prompts=prompts, prompt_words=32, max_tokens=32, seed=r), concurrency=16)
            tok_s[kind].append(load["output_throughput"])
    out: dict[str, Any] = {"tok_s_rounds": tok_s}
    for kind in targets:
        row: dict[str, float] = {"tok_s": _p50(tok_s[kind]), "throughput_ratio": _p50(tok_s[kind]) / _p50(tok_s["engine"])}
        for m in ("ttft", "e2e"):
            row[f"{m}_p50_ms"] = _p50(lat[kind][m])
            row[f"{m}_added_p50_ms"] = row[f"{m}_p50_ms"] - _p50(lat["engine"][m])
            row[f"{m}_paired_diff_p50_ms"] = _p50([a - b for a, b in zip(lat[kind][m], lat["engine"][m], strict=True)])
        out[kind] = row
    return out


def prefix_affinity(bench: Bench, model_dir: Path, prompts: int, rates: list[float]) -> dict[str, Any]:
    """TTFT and throughput on the shared-prefix workload, prefix-affinity against round-robin
    routing: two gateways over the same two replicas, each rate run against both."""
    from pylon.loadgen import Target, Workload

    cfg = {"max_num_seqs": 16, "kv_cache_memory_bytes": 16 << 20, "max_num_batched_tokens": 512}
    bench.replicas(model_dir, "prefix", 2, cfg)
    name = bench.record("prefix", 2)
    gateways = {policy: Target("grpc", bench.gateway(policy)[0], ADMIN_KEY, name)
                for policy in ("prefix", "round_robin")}
    out: dict[str, Any] = {}
    for rate in rates:
        for policy, t in gateways.items():
            w = Workload(num_prompts=prompts, prompt_words=16, max_tokens=16, shared_prefix_words=300,
                         prefix_groups=6, seed=int(rate * 10))
            s = _load(t, w, rate=rate)
            out[f"{policy}@{rate:g}"] = {"ttft_p50_ms": s["ttft_ms"]["p50"], "ttft_p90_ms": s["ttft_ms"]["p90"],
                                         "req_s": s["request_throughput"], "tok_s": s["output_throughput"],
                                         "failed": s["failed"]}
        p, rr = out[f"prefix@{rate:g}"], out[f"round_robin@{rate:g}"]
        out[f"gain@{rate:g}"] = {"ttft_p50": 1 - p["ttft_p50_ms"] / rr["ttft_p50_ms"],
                                 "ttft_p90": 1 - p["ttft_p90_ms"] / rr["ttft_p90_ms"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--overhead-prompts", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prefix-prompts", type=int, default=96)
    p.add_argument("--rates", default="2,4", help="arrivals per second for the prefix benchmark")
    p.add_argument("--only", choices=("overhead", "prefix"), default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--replica", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--relay", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.replica:
        replica_main(*a.replica)
        return
    if a.relay:
        relay_main(*a.relay)
        return
    from tests.support.hf_models import build_model_dir

    with tempfile.TemporaryDirectory(prefix="pylon-gw-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            result: dict[str, Any] = {"load_average": os.getloadavg()[0]}
            if a.only in (None, "overhead"):
                tiny = build_model_dir(Path(tmp) / "tiny")
                result["overhead"] = overhead(bench, tiny, a.overhead_prompts, a.rounds)
            if a.only in (None, "prefix"):
                big = build_model_dir(Path(tmp) / "big", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                      max_position_embeddings=2048)
                result["prefix"] = prefix_affinity(bench, big, a.prefix_prompts, [float(x) for x in a.rates.split(",")])
            result["load_average_after"] = os.getloadavg()[0]
        finally:
            bench.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
