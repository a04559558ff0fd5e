"""Claim: the simulator replays a 100,000-job trace with memory that grows linearly with the
trace and stays under 2 GiB; reports wall time.

Each size runs in a fresh child process (so peak RSS is its own): a Poisson trace of Gavel job
types on Gavel's 36 V100 + 36 P100 + 36 K80 cluster, replayed under one policy. Prints jobs,
events, passes, wall and CPU seconds, peak RSS, and RSS growth per 1,000 jobs between sizes
(roughly constant = linear). Not a test: it prints figures and never fails on them.

    .venv/bin/python benchmarks/sim_scale.py [--sizes 10000,30000,100000] [--policy gavel] [--rate 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(n: int, policy: str, rate: float, throughputs: str | None) -> dict:
    """Run one replay in this process and return its figures."""
    from pylon_services.scheduler.domain.policies import make_policy
    from pylon_services.scheduler.sim.cluster import parse_cluster
    from pylon_services.scheduler.sim.engine import Simulator
    from pylon_services.scheduler.sim.metrics import summarise
    from pylon_services.scheduler.sim.traces import load_gavel_throughputs, poisson_jobs

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    table = load_gavel_throughputs(throughputs)
    w0, c0 = time.perf_counter(), time.process_time()
    jobs = poisson_jobs(table, jobs_per_hour=rate, count=n, seed=0)
    out = Simulator(make_policy(policy), parse_cluster("v100=36,p100=36,k80=36"), table, jobs).run()
    s = summarise(out)
    return {"jobs": n, "finished": s.finished, "passes": s.passes, "samples": len(out.times),
            "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_at_start_mib": base_rss / 1024, "avg_jct_h": s.avg_jct_s / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--policy", default="gavel")
    ap.add_argument("--rate", type=float, default=5.0, help="Poisson arrivals per hour")
    ap.add_argument("--throughputs", help="Gavel simulation_throughputs.json (default: the simulator's own copy)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.policy, args.rate, args.throughputs)))
        return
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--policy", args.policy, "--rate", str(args.rate),
               *(["--throughputs", args.throughputs] if args.throughputs else [])]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        r = rows[-1]
        line = (f"{r['jobs']:>7} jobs: {r['passes']:>7} passes, wall {r['wall_s']:7.1f} s, CPU {r['cpu_s']:7.1f} s, "
                f"peak RSS {r['peak_rss_mib']:7.1f} MiB")
        if len(rows) > 1:
            a, b = rows[-2], rows[-1]
            per_k = (b["peak_rss_mib"] - a["peak_rss_mib"]) / ((b["jobs"] - a["jobs"]) / 1000)
            r["rss_mib_per_1k_jobs"] = per_k
            line += (f", +{per_k:.2f} MiB per 1,000 more jobs, CPU x{b['cpu_s'] / a['cpu_s']:.1f}"
                     f" for x{b['jobs'] / a['jobs']:.1f} jobs")
        if not args.json:
            print(line, flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
