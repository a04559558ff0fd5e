"""``python -m pylon_services.scheduler.sim``: replay a trace under a policy and print figures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pylon_services.scheduler.domain.policies import POLICIES, make_policy
from pylon_services.scheduler.domain.throughput import ThroughputTable
from pylon_services.scheduler.sim.cluster import parse_cluster
from pylon_services.scheduler.sim.engine import Simulator
from pylon_services.scheduler.sim.metrics import plot, summarise
from pylon_services.scheduler.sim.traces import (
    TraceError,
    load_gavel_throughputs,
    poisson_jobs,
    read_alibaba_nodes,
    read_alibaba_pods,
    read_gavel_trace,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m pylon_services.scheduler.sim",
        description="Replay a job trace on a declared GPU cluster with one of the scheduler's own policies "
                    "and report average/p99 JCT, makespan, utilisation and fairness.",
        epilog="Examples (the trace files are in a clone of the repository):\n"
               "  --trace poisson:jobs_per_hour=60,count=500 --policy gavel --cluster v100=36,p100=36,k80=36\n"
               "  --trace benchmarks/data/gavel/msr_0e4a51.trace --policy fifo --plot out.png\n"
               "  --trace benchmarks/data/alibaba-gpu-v2023/openb_pod_list_gpuspec33_head.csv "
               "--nodes benchmarks/data/alibaba-gpu-v2023/openb_node_list_gpu_node.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", required=True,
                    help="a Gavel .trace (10- or 7-column), an Alibaba pod .csv, or poisson:jobs_per_hour=R,count=N[,seed=S]")
    ap.add_argument("--policy", default="gavel", choices=sorted(POLICIES), help="scheduling policy (default gavel)")
    ap.add_argument("--cluster", default="v100=36,p100=36,k80=36",
                    help="TYPE=NODES or TYPE=NODESxGPUS, comma separated (default Gavel's 36/36/36)")
    ap.add_argument("--nodes", help="an Alibaba node list .csv instead of --cluster")
    ap.add_argument("--throughputs",
                    help="a Gavel simulation_throughputs.json (default: Gavel's table shipped with the simulator; "
                         "ignored for Alibaba traces: 1 step/s everywhere)")
    ap.add_argument("--checkpoint-interval", type=float, default=0.0,
                    help="seconds of progress a preempted job may lose (0: it checkpoints when told)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N jobs of the trace")
    ap.add_argument("--plot", help="write a PNG of queue length and utilisation over time")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        nodes = read_alibaba_nodes(args.nodes) if args.nodes else parse_cluster(args.cluster)
        if args.trace.endswith(".csv"):
            table = ThroughputTable(default_rate=1.0)
            jobs = read_alibaba_pods(args.trace, limit=args.limit or None)
        else:
            table = load_gavel_throughputs(args.throughputs)
            jobs = _poisson(args.trace, table) if args.trace.startswith("poisson:") else read_gavel_trace(args.trace)
            jobs = jobs[: args.limit] if args.limit else jobs
    except (TraceError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Simulator(make_policy(args.policy), nodes, table, jobs,
                    checkpoint_interval_s=args.checkpoint_interval).run()
    summary = summarise(out)
    if args.plot:
        plot(out, args.plot, f"{args.policy} on {Path(args.trace).name}")
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        for k, v in summary.as_dict().items():
            print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def _poisson(spec: str, table: ThroughputTable) -> list:
    opts = dict(kv.split("=", 1) for kv in spec.removeprefix("poisson:").split(",") if kv)
    try:
        return poisson_jobs(table, jobs_per_hour=float(opts["jobs_per_hour"]), count=int(opts.get("count", 500)),
                            seed=int(opts.get("seed", 0)))
    except (KeyError, ValueError) as e:
        raise ValueError(f"bad poisson spec {spec!r} ({e}); write poisson:jobs_per_hour=R,count=N") from None


if __name__ == "__main__":
    sys.exit(main())
