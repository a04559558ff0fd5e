"""Claim: in Gavel's setting (36 V100 + 36 P100 + 36 K80, Poisson arrivals of Gavel's job types
with durations from its throughput table) the heterogeneity-aware policy cuts average JCT at
least 1.5x against its type-agnostic counterpart (fair share) at high load.

Every policy is the scheduler's own policy object driven by the simulator; all policies replay
the same generated trace (same seed) in the same run. Also replays a Gavel msr trace (7-column
form, multi-GPU gangs) and the Alibaba GPU v2023 pod list on its node list (GPU-type
constraints; no per-type throughputs exist there, so every type runs at 1 step/s and the
figures compare queueing only). That trace barely queues on the scaled cluster, so a loaded
variant ("alibaba-loaded") also replays it with inter-arrival times compressed
``--alibaba-compress`` times, on every ``--alibaba-loaded-node-every``-th node, without the pods
that run longer than ``--alibaba-max-hours`` (a few pods that run for months, which alone decide
average JCT and makespan whatever the policy). Prints average/p99 JCT, makespan, utilisation and
Jain's fairness per policy, and the ratios; writes small PNGs of queue length and utilisation.
Not a test: it prints figures and never fails on them.

    .venv/bin/python benchmarks/sched_policy_quality.py                      # ~minutes
    .venv/bin/python benchmarks/sched_policy_quality.py --jobs 2000 --rates 2,4,6,8,10 --seeds 3
    .venv/bin/python benchmarks/sched_policy_quality.py --workloads alibaba-loaded   # loaded Alibaba only
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pylon_services.scheduler.domain.policies import make_policy
from pylon_services.scheduler.domain.throughput import ThroughputTable
from pylon_services.scheduler.sim.cluster import parse_cluster
from pylon_services.scheduler.sim.engine import Simulator
from pylon_services.scheduler.sim.metrics import plot, summarise
from pylon_services.scheduler.sim.traces import (
    load_gavel_throughputs,
    loaded,
    poisson_jobs,
    read_alibaba_nodes,
    read_alibaba_pods,
    read_gavel_trace,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"  # copies with their attribution (benchmarks/data/*/ATTRIBUTION.md)
POLICIES = ("fifo", "fair-share", "gavel", "finish-time-fairness")
CLUSTER = "v100=36,p100=36,k80=36"


def run_one(task: dict) -> dict:
    """One simulation (in a worker process): returns the summary as a dict."""
    if task["kind"] in ("alibaba", "alibaba-loaded"):
        table = ThroughputTable(default_rate=1.0)
        nodes = read_alibaba_nodes(task["nodes"])[:: task["node_every"]]
        jobs = read_alibaba_pods(task["trace"], limit=task["limit"])
        if task["kind"] == "alibaba-loaded":
            jobs = loaded(jobs, compress=task["compress"], max_work=task["max_hours"] * 3600)
    else:
        table = load_gavel_throughputs(task["throughputs"])
        nodes = parse_cluster(CLUSTER)
        if task["kind"] == "poisson":
            jobs = poisson_jobs(table, jobs_per_hour=task["rate"], count=task["jobs"], seed=task["seed"])
        else:
            jobs = read_gavel_trace(task["trace"])[: task["limit"]]
    out = Simulator(make_policy(task["policy"]), nodes, table, jobs).run()
    if task.get("plot"):
        plot(out, task["plot"], task["title"])
    return {**task, **summarise(out).as_dict()}


def tasks(args: argparse.Namespace) -> list[dict]:
    img = ROOT / "docs" / "img"
    top = max(args.rates)
    out: list[dict] = []
    want = set(args.workloads.split(","))
    for rate in args.rates if "poisson" in want else []:
        for seed in range(args.seeds):
            for p in POLICIES:
                png = str(img / f"sched_poisson_{p}.png") if rate == top and seed == 0 and args.plots else None
                out.append({"kind": "poisson", "rate": rate, "seed": seed, "jobs": args.jobs, "policy": p,
                            "throughputs": args.throughputs, "plot": png,
                            "title": f"{p}: Poisson {rate} jobs/h, {CLUSTER}"})
    for p in POLICIES if "msr" in want else ():
        out.append({"kind": "msr", "trace": args.msr, "limit": args.msr_limit, "policy": p,
                    "throughputs": args.throughputs, "plot": str(img / f"sched_msr_{p}.png")
                    if args.plots and p in ("fair-share", "gavel") else None,
                    "title": f"{p}: Gavel msr {Path(args.msr).name}"})
    for p in ("fifo", "fair-share", "gavel") if "alibaba" in want else ():
        out.append({"kind": "alibaba", "trace": args.alibaba, "nodes": args.alibaba_nodes, "limit": args.alibaba_limit,
                    "node_every": args.alibaba_node_every,
                    "policy": p, "plot": str(img / "sched_alibaba_gavel.png") if args.plots and p == "gavel" else None,
                    "title": f"{p}: Alibaba v2023 gpuspec33, 1/{args.alibaba_node_every} of the nodes"})
    for p in POLICIES if "alibaba-loaded" in want else ():
        out.append({"kind": "alibaba-loaded", "trace": args.alibaba, "nodes": args.alibaba_nodes,
                    "limit": args.alibaba_limit, "node_every": args.alibaba_loaded_node_every,
                    "compress": args.alibaba_compress, "max_hours": args.alibaba_max_hours, "policy": p,
                    "plot": str(img / f"sched_alibaba_loaded_{p}.png") if args.plots and p in ("fifo", "gavel")
                    else None,
                    "title": f"{p}: Alibaba v2023, arrivals {args.alibaba_compress:g}x, "
                             f"1/{args.alibaba_loaded_node_every} of the nodes"})
    return out


def report(results: list[dict], args: argparse.Namespace) -> dict:
    """Average over seeds; print one line per (workload, policy) and the JCT ratios."""
    table: dict[str, dict[str, dict]] = {}
    for r in results:
        key = f"poisson {r['rate']:g}/h" if r["kind"] == "poisson" else r["kind"]
        table.setdefault(key, {}).setdefault(r["policy"], []).append(r)
    summary = {}
    for key, per_policy in table.items():
        print(f"\n== {key} ==")
        row = {}
        for p, rs in per_policy.items():
            m = {k: statistics.mean(x[k] for x in rs) for k in ("avg_jct_s", "p99_jct_s", "makespan_s",
                                                                   "utilisation", "jain_fairness", "finished",
                                                                   "rejected", "preemptions")}
            row[p] = m
            print(f"{p:>22}: avg JCT {m['avg_jct_s'] / 3600:8.2f} h  p99 {m['p99_jct_s'] / 3600:8.1f} h  "
                  f"makespan {m['makespan_s'] / 3600:8.1f} h  util {m['utilisation']:.2f}  "
                  f"Jain {m['jain_fairness']:.2f}  finished {m['finished']:.0f}  rejected {m['rejected']:.0f}  "
                  f"preemptions {m['preemptions']:.0f}")
        if "gavel" in row and "fair-share" in row:
            ratios = {"fair-share/gavel": row["fair-share"]["avg_jct_s"] / row["gavel"]["avg_jct_s"],
                      "fifo/gavel": row["fifo"]["avg_jct_s"] / row["gavel"]["avg_jct_s"]}
            if "finish-time-fairness" in row:
                ratios["fair-share/finish-time-fairness"] = (row["fair-share"]["avg_jct_s"]
                                                             / row["finish-time-fairness"]["avg_jct_s"])
            print("   avg JCT ratios (type-agnostic / heterogeneity-aware): "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
            row["ratios"] = ratios
        summary[key] = row
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[2.0, 4.0, 6.0, 8.0],
                    help="Poisson arrival rates in jobs/hour")
    ap.add_argument("--jobs", type=int, default=600, help="jobs per Poisson run")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--throughputs", help="Gavel simulation_throughputs.json (default: the simulator's own copy)")
    ap.add_argument("--msr", default=str(DATA / "gavel" / "msr_0e4a51.trace"))
    ap.add_argument("--msr-limit", type=int, default=1200)
    ap.add_argument("--alibaba", default=str(DATA / "alibaba-gpu-v2023" / "openb_pod_list_gpuspec33_head.csv"),
                    help="Alibaba pod list (the default copy holds the first 3,000 GPU pods of gpuspec33)")
    ap.add_argument("--alibaba-nodes", default=str(DATA / "alibaba-gpu-v2023" / "openb_node_list_gpu_node.csv"))
    ap.add_argument("--alibaba-limit", type=int, default=3000)
    ap.add_argument("--alibaba-node-every", type=int, default=10,
                    help="keep every Nth Alibaba node (the full 1,213-node cluster is nearly idle under this trace)")
    ap.add_argument("--alibaba-compress", type=float, default=300.0,
                    help="loaded variant: divide the Alibaba inter-arrival times by this")
    ap.add_argument("--alibaba-loaded-node-every", type=int, default=40,
                    help="loaded variant: keep every Nth Alibaba node")
    ap.add_argument("--alibaba-max-hours", type=float, default=24.0,
                    help="loaded variant: leave out pods that run longer than this (0 keeps all)")
    ap.add_argument("--workloads", default="poisson,msr,alibaba,alibaba-loaded",
                    help="comma-separated subset of poisson,msr,alibaba,alibaba-loaded")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--no-plots", dest="plots", action="store_false")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with ProcessPoolExecutor(args.procs) as pool:
        results = list(pool.map(run_one, tasks(args)))
    summary = report(results, args)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
