"""Claim: the gateway's autoscaler turns a load step into a serving replica about as fast as a
person scaling by hand would, and a request to a deployment scaled to zero is held and served
once one replica has started (the cold start, measured).

Everything is real: Redis, the four services in this process, the scheduler leader, a Ray
cluster on this machine, torch engine replicas of a small random Llama. Figures:

- *load step -> serving*: from the first request of a step of ``--callers`` back-to-back callers
  on a 1-replica deployment (autoscaling 1..2, ``target_queue`` 2) to the second replica serving.
  Baseline, same run, alternating: ``ScaleDeployment`` to 2 at the step instead, to the second
  replica serving. The difference is what the autoscaler adds (heartbeats every 2 s, the
  controller's tick).
- *cold start*: a request to the deployment at zero replicas, from sent to answered, and the
  gateway's own measure (held -> replica ready). Baseline: the same request to a ready replica.

    .venv/bin/python benchmarks/gateway_autoscale.py --runs 3
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYLON_TORCH_THREADS", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray with token authentication, as `pylon up` and the tests run it (read once, at import).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def _wait(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = check()
        if out:
            return out
        time.sleep(0.1)
    raise TimeoutError("benchmark condition not reached")


def _ready(client: Any, name: str, n: int) -> bool:
    d = client.deployments.get(name)
    return d.replicas == n and sum(r.ready for r in d.replica_status) == n


def _load(client: Any, name: str, callers: int, stop: threading.Event) -> list[threading.Thread]:
    def run() -> None:
        while not stop.is_set():
            try:
                client.generate(name, "hello", max_tokens=400, ignore_eos=True, temperature=0, timeout=120)
            except Exception:  # noqa: BLE001 - a benchmark caller keeps going
                time.sleep(0.2)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    return threads


def step_once(client: Any, name: str, callers: int, by_hand: bool) -> float:
    """Seconds from a load step to the second replica serving (autoscaler, or ScaleDeployment)."""
    from pylon.types import Autoscaling

    client.deployments.scale(name, 1, autoscaling=Autoscaling(0, 0))  # fixed at 1 while the load settles
    _wait(lambda: _ready(client, name, 1), 120)
    time.sleep(4.5)  # two heartbeats: none still reports the previous step's load
    if not by_hand:
        client.deployments.scale(name, 1, autoscaling=Autoscaling(1, 2, 2, 0, 0, 600, 600))
    stop = threading.Event()
    t0 = time.monotonic()
    threads = _load(client, name, callers, stop)
    if by_hand:
        client.deployments.scale(name, 2)
    try:
        _wait(lambda: _ready(client, name, 2), 240)
        return time.monotonic() - t0
    finally:
        stop.set()
        for t in threads:
            t.join(130)


def cold_once(client: Any, name: str) -> tuple[float, float, float]:
    """(request at zero, the gateway's cold-start measure, the same request warm), seconds."""
    from pylon.types import Autoscaling

    client.deployments.scale(name, autoscaling=Autoscaling(0, 2, 2, 0, 0, 1, 1))
    _wait(lambda: client.deployments.get(name).state == "idle", 120)
    t0 = time.monotonic()
    client.generate(name, "hello", max_tokens=4, temperature=0, timeout=300)
    cold = time.monotonic() - t0
    measured = client.deployments.get(name).last_cold_start_s
    t1 = time.monotonic()
    client.generate(name, "hello", max_tokens=4, temperature=0, timeout=60)
    return cold, measured, time.monotonic() - t1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--callers", type=int, default=6)
    args = ap.parse_args()
    faulthandler.dump_traceback_later(400, exit=True)  # a stuck run says where, and ends

    from ray.cluster_utils import Cluster

    import pylon
    from pylon_services.localstack.redis_server import RedisServer
    from tests.support.hf_models import build_model_dir
    from tests.support.platform import ADMIN_KEY, InProcessPlatform

    home = Path(tempfile.mkdtemp(prefix="pylon-bench-autoscale-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 6, "include_dashboard": False,
                                                           "node_ip_address": "127.0.0.1"})
    with RedisServer(str(home / "redis")) as redis_server:
        platform = InProcessPlatform(redis_server.url, f"file://{home / 'objects'}", cluster.address).start()
        try:
            with pylon.Client(platform.addresses["gateway"], ADMIN_KEY) as admin:
                _, token = admin.admin.create_key("bench", "editor")
            with pylon.Client(platform.addresses["gateway"], token) as client:
                mv = client.models.register("bench-as", str(build_model_dir(home / "model", "llama")))
                client.deployments.deploy("bench-as", f"models:/bench-as/versions/{mv.version}", timeout=300)
                auto, hand, cold, measured, warm = [], [], [], [], []
                for _ in range(args.runs):
                    hand.append(step_once(client, "bench-as", args.callers, by_hand=True))
                    auto.append(step_once(client, "bench-as", args.callers, by_hand=False))
                    c, m, w = cold_once(client, "bench-as")
                    cold.append(c)
                    measured.append(m)
                    warm.append(w)
                client.deployments.delete("bench-as")
        finally:
            import ray

            platform.stop()
            ray.shutdown()
            cluster.shutdown()
    med = statistics.median
    print(f"load step -> 2nd replica serving: autoscaler {med(auto):.1f}s (runs {', '.join(f'{x:.1f}' for x in auto)}); "
          f"ScaleDeployment by hand {med(hand):.1f}s (runs {', '.join(f'{x:.1f}' for x in hand)}); "
          f"autoscaler/by hand {med(auto) / med(hand):.2f}x")
    print(f"request at zero replicas: {med(cold):.2f}s (gateway's cold-start measure {med(measured):.2f}s); "
          f"same request warm: {med(warm) * 1000:.0f} ms")
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
