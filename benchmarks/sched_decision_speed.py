"""Claim: one scheduling pass over 10,000 pending jobs and 1,000 nodes of 5 GPU types takes under
a second on this 2-core machine, and at most 15x the time for 1,000 pending jobs (no worse than
about linear).

The cluster is 1,000 nodes x 8 GPUs of 5 types, about 80% allocated by running jobs of 20
tenants (so most pending jobs do not fit and must be explained); pending jobs are a mix of
1/2/4/8-GPU single workers and 2-4 worker gangs with GPU-type preferences, three priority classes
and quotas in cohorts. Each policy's pass is timed R times on the same snapshot; the median is
printed with the ratio 10k/1k. Not a test: it prints figures and never fails on them.

Also timed: an append pass (``Policy.extend``), which the leader runs when only new submissions
arrived since a whole pass: 100 arrivals behind the 10,000 waiting jobs, against a whole pass over
all 10,100 (what the leader would otherwise run for them).

    .venv/bin/python benchmarks/sched_decision_speed.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time

from pylon_services.scheduler.domain.policies import make_policy
from pylon_services.scheduler.domain.scheduling import Demand, Node, PendingJob, QueueQuota, RunningJob, Snapshot
from pylon_services.scheduler.domain.throughput import ThroughputTable

TYPES = ("H100", "A100", "V100", "P100", "T4")
TENANTS = [f"t{i}" for i in range(20)]


def build(pending_count: int, nodes_count: int = 1000, seed: int = 0) -> Snapshot:
    rng = random.Random(seed)
    table = ThroughputTable()
    for j in range(10):
        for k, t in enumerate(TYPES):
            table.set(f"job{j}", t, (len(TYPES) - k) * (1 + rng.random()))
    nodes, running = [], []
    for i in range(nodes_count):
        t = TYPES[i % len(TYPES)]
        busy = rng.choice([8, 8, 8, 6, 4, 8, 8, 7])
        nodes.append(Node(f"n{i}", t, 8, 8 - busy, 64 - busy * 4, cpus_total=64))
        if busy:
            tenant = rng.choice(TENANTS)
            running.append(RunningJob(f"r{i}", tenant, f"tenants/{tenant}/queues/default", rng.choice([0, 100]), t,
                                      Demand(1, busy, 4, 0), (f"n{i}",), 0.0, f"job{rng.randrange(10)}",
                                      True, False, False, rng.uniform(1e3, 1e6)))
    queues = {f"tenants/{t}/queues/default": QueueQuota(f"tenants/{t}/queues/default", t,
                                                          {ty: 8 * nodes_count / len(TENANTS) / len(TYPES) * 1.2
                                                           for ty in TYPES}, cohort=f"c{i % 4}",
                                                          weight=1 + i % 3) for i, t in enumerate(TENANTS)}
    pending = []
    for i in range(pending_count):
        tenant = rng.choice(TENANTS)
        workers = rng.choice([1, 1, 1, 2, 4])
        gpus = rng.choice([1, 1, 2, 4, 8]) if workers == 1 else rng.choice([1, 2, 4])
        prefs = tuple(rng.sample(TYPES, rng.choice([0, 1, 2, 3])))
        pending.append(PendingJob(f"p{i}", tenant, f"tenants/{tenant}/queues/default", rng.choice([0, 100, 1000]),
                                  float(i), Demand(workers, gpus, 4, 0, prefs), f"job{rng.randrange(10)}", True, True,
                                  rng.uniform(1e3, 1e6)))
    usage = {t: rng.uniform(0, 1e6) for t in TENANTS}
    return Snapshot(1.0, tuple(nodes), tuple(pending), tuple(running), queues, usage, table)


def time_pass(policy_name: str, snap: Snapshot, rounds: int) -> tuple[float, float, int, int]:
    """Median wall and CPU seconds of one pass (CPU time is what to compare on a shared machine)."""
    walls, cpus = [], []
    for _ in range(rounds):
        policy = make_policy(policy_name)
        w0, c0 = time.perf_counter(), time.process_time()
        d = policy.schedule(snap)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), len(d.admits), len(d.explanations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    small, big = build(1_000), build(10_000)
    results = {}
    for name in ("fifo", "fair-share", "gavel", "finish-time-fairness"):
        w1, t1, a1, e1 = time_pass(name, small, args.rounds)
        w10, t10, a10, e10 = time_pass(name, big, args.rounds)
        results[name] = {"cpu_1k_s": t1, "cpu_10k_s": t10, "wall_1k_s": w1, "wall_10k_s": w10,
                         "ratio_10k_over_1k": t10 / t1, "admitted_10k": a10, "explained_10k": e10}
        if not args.json:
            print(f"{name:>22}: 1k pending {t1 * 1e3:7.1f} ms CPU ({w1 * 1e3:7.1f} wall; {a1} admitted, {e1} explained)"
                  f" | 10k pending {t10 * 1e3:7.1f} ms CPU ({w10 * 1e3:7.1f} wall; {a10} admitted, {e10} explained)"
                  f" | ratio {t10 / t1:5.2f}x")
    for name in ("fifo", "fair-share", "gavel", "finish-time-fairness"):
        append, whole = time_append(name, big, args.rounds)
        results[name] |= {"cpu_append_100_s": append, "cpu_whole_10100_s": whole}
        if not args.json:
            print(f"{name:>22}: 100 arrivals behind 10k: append pass {append * 1e3:6.1f} ms CPU"
                  f" | whole pass over 10,100 {whole * 1e3:7.1f} ms CPU | {whole / append:5.0f}x")
    if args.json:
        print(json.dumps(results))


def time_append(policy_name: str, snap: Snapshot, rounds: int, arrivals: int = 100) -> tuple[float, float]:
    """Median CPU of an append pass of ``arrivals`` new jobs after a whole pass over ``snap``, and
    of one whole pass over all of them. The arrivals are copies of the last pending jobs, later,
    at the lowest priority (what the controller lets an append pass take)."""
    low = min(j.priority for j in snap.pending)
    new = tuple(dataclasses.replace(j, id=f"new{i}", submit_time=10.0 + i, priority=low)
                for i, j in enumerate(snap.pending[-arrivals:]))
    appends, wholes = [], []
    for _ in range(rounds):
        policy = make_policy(policy_name)
        p = policy.run(snap)
        c0 = time.process_time()
        policy.extend(p, new)
        appends.append(time.process_time() - c0)
        c0 = time.process_time()
        make_policy(policy_name).schedule(dataclasses.replace(snap, pending=snap.pending + new))
        wholes.append(time.process_time() - c0)
    return statistics.median(appends), statistics.median(wholes)


if __name__ == "__main__":
    main()
