"""Serving load generator as a script (the same code as `pylon bench serve`, ``pylon.loadgen``):
Poisson arrivals at ``--rate`` or a fixed ``--concurrency`` against the gateway over gRPC or HTTP,
or one engine replica; prints TTFT, TPOT, ITL and end-to-end percentiles, throughput and goodput
as vLLM's benchmark_serving defines them.

    python benchmarks/serve_bench.py --target grpc --address 127.0.0.1:50054 --token $PYLON_TOKEN \\
        --deployment my-dep --num-prompts 200 --rate 8 --goodput ttft:500 tpot:50
    python benchmarks/serve_bench.py --target http --address http://127.0.0.1:8000/v1 ...
    python benchmarks/serve_bench.py --target engine --address REPLICA:PORT --token $INTERNAL_KEY ...
"""

from __future__ import annotations

import argparse
import asyncio
import json

from pylon.loadgen import TARGETS, Target, Workload, parse_slos, report, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=TARGETS, default="grpc")
    p.add_argument("--address", required=True, help="gRPC host:port, or the HTTP base URL ending in /v1")
    p.add_argument("--token", default="", help="API key (gateway) or the platform's internal key (engine)")
    p.add_argument("--deployment", default="", help="deployment or name@alias (gateway targets)")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--rate", type=float, default=float("inf"), help="Poisson arrivals per second (inf: all at once)")
    p.add_argument("--concurrency", type=int, default=0, help="at most this many in flight (0: no limit)")
    p.add_argument("--prompt-words", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--shared-prefix-words", type=int, default=0, help="shared-prefix workload: prefix length")
    p.add_argument("--prefix-groups", type=int, default=4)
    p.add_argument("--session-ids", action="store_true", help="send x-session-id per prefix group")
    p.add_argument("--goodput", nargs="*", default=[], help="SLOs in ms: ttft:500 tpot:50 e2el:2000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    workload = Workload(a.num_prompts, a.prompt_words, a.max_tokens, a.shared_prefix_words, a.prefix_groups, a.seed)
    summary = asyncio.run(run(Target(a.target, a.address, a.token, a.deployment), workload, a.rate, a.concurrency,
                              a.session_ids, parse_slos(a.goodput)))
    summary.pop("results")
    print(json.dumps(summary, indent=2) if a.json else report(summary))


if __name__ == "__main__":
    main()
