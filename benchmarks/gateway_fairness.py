"""Fairness of the gateway's admission across tenants: a light tenant's time to first token on a
deployment, alone and while a heavy tenant floods the same deployment, through one gateway per
side (one platform run, one side after another, the same engine replica). The deployment is
the light tenant's, shared with the heavy one (``shared_with``), as a platform team serving one
model to many teams runs it; the heavy tenant floods from ``--heavy-keys`` API keys at once.

* ``fifo``: first come, first served (``PYLON_GATEWAY_FAIR_QUEUING=false``) and one caller may
  hold every dispatch slot (``PYLON_GATEWAY_MAX_INFLIGHT_SHARE=1``): the baseline, no fairness;
* ``vtc``: the hierarchical virtual token counter (tenants, then keys) orders the queue, a
  tenant may still hold every slot;
* ``vtc+share``: the default, VTC and a tenant holding at most 75% of the slots (a key less).
* ``engine-floor``: the control. The light tenant calls the engine replica itself, with the
  platform's internal key, while the heavy flood goes through a FIFO gateway holding as many
  slots as ``vtc+share`` leaves the heavy tenant (3 of 4). The light request then meets the same
  batch with no gateway queue in its way: what is left is the engine's step and the machine's
  contention, the least any admission policy can give it.

Each gateway sends the replica at most ``--slots`` requests at once. The heavy tenant keeps
``--flood`` streams of ``--heavy-tokens`` tokens going, from its own process; the light tenant
sends ``--samples`` requests of 2 tokens one after another, alone and then under the flood,
``--cycles`` times. No quotas: this measures queueing alone. The claim
(issue 15): under the flood, the light tenant's median TTFT stays <= 1.5x its unloaded value.
Real Redis, Ray, services and torch engine replica (a random-init 2-layer Llama). Not a test: it
never fails on the figures.

    .venv/bin/python benchmarks/gateway_fairness.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
for p in (ROOT, os.path.join(ROOT, "services"), os.path.join(ROOT, "sdk")):
    sys.path.insert(0, p)

SIDES = {"fifo": {"gateway_fair_queuing": False, "gateway_max_inflight_share": 1.0},
         "vtc": {"gateway_fair_queuing": True, "gateway_max_inflight_share": 1.0},
         "vtc+share": {"gateway_fair_queuing": True, "gateway_max_inflight_share": 0.75},
         "engine-floor": {"gateway_fair_queuing": False, "gateway_max_inflight_share": 1.0}}
PROMPT = "The quick brown fox"


def ttft(client: Any, dep: str) -> float:
    start = time.perf_counter()
    for _ in client.generate_stream(dep, PROMPT, max_tokens=2, temperature=0):
        return time.perf_counter() - start
    raise RuntimeError("no piece")


class EngineLight:
    """The light tenant's requests sent to the replica itself (``engine-floor``), with the SDK
    client's ``generate_stream`` shape so ``ttft`` times both alike (sync gRPC, one channel)."""

    def __init__(self, address: str, internal_key: str) -> None:
        import grpc

        from pylon.engine.v1 import engine_pb2, engine_pb2_grpc
        from pylon_services.runtime.internal_auth import bearer

        self.pb = engine_pb2
        self.channel = grpc.insecure_channel(address)
        self.stub = engine_pb2_grpc.EngineServiceStub(self.channel)
        self.md = [bearer(internal_key)]
        self.n = 0

    def generate_stream(self, dep: str, prompt: str, max_tokens: int, temperature: float) -> Any:
        self.n += 1
        req = self.pb.GenerateRequest(request_id=f"light-{self.n}", prompt=prompt,
                                      sampling=self.pb.SamplingParams(max_tokens=max_tokens, temperature=temperature))
        yield from self.stub.Generate(req, metadata=self.md, timeout=60)

    def __enter__(self) -> EngineLight:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()


def flood_main(spec: str) -> None:
    """The heavy tenant, in its own process (as another team's clients are, elsewhere): ``flood``
    streams of ``heavy_tokens`` kept going over its keys until SIGTERM, then the count served.
    In the measuring process its threads would share the GIL with the light client and the
    gateway, and the light tenant's TTFT would measure that contention, not the gateway's queue."""
    import asyncio
    import signal

    from pylon.loadgen import Target, sender

    a = json.loads(spec)
    served = [0]

    async def run() -> None:
        sends = [sender(Target("grpc", a["address"], token, a["dep"]), a["heavy_tokens"]) for token in a["tokens"]]

        async def stream(i: int) -> None:
            while True:
                async for _ in sends[i % len(sends)](PROMPT, "", i):
                    pass
                served[0] += 1

        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [asyncio.ensure_future(stream(i)) for i in range(a["flood"])]
        await stop.wait()
        for t in tasks:
            t.cancel()

    asyncio.run(run())
    print(served[0], flush=True)


def side(light: Any, address: str, heavy_tokens: list[str], dep: str, args: argparse.Namespace) -> dict[str, float]:
    """Median light TTFT alone and under the heavy flood (its streams spread over the heavy
    tenant's keys, from another process), over ``cycles`` alternations of the two, so that drift
    in the machine's load falls on both; the heavy requests served meanwhile."""
    for _ in range(2):
        ttft(light, dep)
    spec = json.dumps({"address": address, "tokens": heavy_tokens, "dep": dep, "flood": args.flood,
                       "heavy_tokens": args.heavy_tokens})
    alone: list[float] = []
    loaded: list[float] = []
    served, flooded = 0, 0.0
    for _ in range(args.cycles):
        alone += [ttft(light, dep) for _ in range(args.samples)]
        flood = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--flood-worker", spec],
                                 stdout=subprocess.PIPE)
        time.sleep(3.0)  # the worker starts and the queue fills
        start = time.perf_counter()
        loaded += [ttft(light, dep) for _ in range(args.samples)]
        flooded += time.perf_counter() - start + 3.0
        flood.terminate()
        out, _ = flood.communicate(timeout=120)
        served += int(out.decode().split()[-1]) if out.strip() else 0
    a, b = statistics.median(alone), statistics.median(loaded)
    return {"alone_ms": a * 1000, "loaded_ms": b * 1000, "ratio": b / a, "heavy_per_s": served / flooded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", type=int, default=4, help="dispatch slots per replica (each gateway)")
    ap.add_argument("--flood", type=int, default=12, help="heavy streams kept going")
    ap.add_argument("--heavy-tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=11, help="light requests per phase")
    ap.add_argument("--cycles", type=int, default=3, help="alternations of the light alone and under the flood")
    ap.add_argument("--heavy-keys", type=int, default=4, help="API keys the heavy tenant floods from")
    ap.add_argument("--share", type=float, default=0.75, help="vtc+share: the share of the slots a tenant may hold")
    ap.add_argument("--sides", default=",".join(SIDES), help="which sides to run, of " + ", ".join(SIDES))
    ap.add_argument("--flood-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood_worker:
        flood_main(args.flood_worker)
        return
    # One-machine Ray on loopback with token authentication, as the tests run it (tests/conftest.py);
    # Ray reads these once, at import, and the leader and ingest processes inherit them.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import torch

    torch.set_num_threads(1)
    from ray.cluster_utils import Cluster

    import pylon
    from pylon_services.localstack.procs import free_port
    from pylon_services.localstack.redis_server import RedisServer
    from pylon_services.runtime.settings import Settings
    from tests.support.hf_models import build_model_dir
    from tests.support.platform import ADMIN_KEY, InProcessPlatform

    tmp = tempfile.mkdtemp(prefix="gw-fair-")
    redis = RedisServer(os.path.join(tmp, "redis")).start()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False,
                                                           "node_ip_address": "127.0.0.1"})
    platform = InProcessPlatform(redis.url, f"file://{tmp}/objects", cluster.address).start()
    results: dict[str, Any] = {}
    try:
        with pylon.Client(platform.addresses["gateway"], ADMIN_KEY) as admin:
            _, light_token = admin.admin.create_key("light", "editor", "light")
            heavy_tokens = [admin.admin.create_key("heavy", "editor", f"heavy-{i}")[1] for i in range(args.heavy_keys)]
        with pylon.Client(platform.addresses["gateway"], light_token) as owner:
            mv = owner.models.register("fair", str(build_model_dir(Path(tmp) / "m")))
            owner.deployments.deploy("fair", f"models:/fair/versions/{mv.version}", timeout=300,
                                     shared_with=["heavy"])
        SIDES["vtc+share"]["gateway_max_inflight_share"] = args.share
        for name, overrides in SIDES.items():
            if name not in args.sides.split(","):
                continue
            floor = name == "engine-floor"
            slots = max(1, math.ceil(args.share * args.slots)) if floor else args.slots  # the heavy's under vtc+share
            settings = Settings(**{**platform.base, "port": free_port(), "gateway_http_port": -1,
                                   "gateway_max_inflight_per_replica": slots, **overrides})
            server = platform.lt.run(platform._start("gateway", settings))
            address = f"127.0.0.1:{settings.port}"
            dep = "tenants/light/deployments/fair"
            if floor:
                with pylon.Client(platform.addresses["gateway"], light_token) as owner:
                    replica = owner.deployments.get(dep).replica_status[0].address
                light: Any = EngineLight(replica, settings.internal_key)
            else:
                light = pylon.Client(address, light_token)
            with light:
                results[name] = side(light, address, heavy_tokens, dep, args)
            platform.lt.run(server.stop(grace=1.0))
            print(name, json.dumps({k: round(v, 2) for k, v in results[name].items()}), flush=True)
        print(json.dumps({"args": vars(args), "load_average": os.getloadavg(), "results": results}, indent=2),
              flush=True)
    finally:
        import ray

        platform.stop()
        ray.shutdown()  # the driver's connection first: Ray refuses to remove the head under it
        cluster.shutdown()
        redis.stop()


if __name__ == "__main__":
    main()
