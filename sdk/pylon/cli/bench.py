"""`pylon bench serve`: load a deployment (gateway gRPC or HTTP) or one engine replica with
Poisson arrivals or a fixed concurrency, and print vLLM's serving figures (``pylon.loadgen``)."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

import typer

from pylon.cli._common import JSON, _opts, err
from pylon.loadgen import TARGETS, Target, Workload, parse_slos, report, run

bench_app = typer.Typer(help="Benchmarks against a running platform.", no_args_is_help=True)


@bench_app.command("serve")
def serve(deployment: str = typer.Argument("", help="Deployment (id, tenants/.../deployments/...) or name@alias; "
                                                    "not used with --target engine."),
          target: str = typer.Option("grpc", help=f"One of {', '.join(TARGETS)}."),
          url: Optional[str] = typer.Option(None, help="HTTP base URL ending in /v1 (--target http), or the "
                                                        "replica's host:port (--target engine)."),
          num_prompts: int = typer.Option(100, help="Requests to send."),
          rate: float = typer.Option(float("inf"), help="Poisson arrivals per second (inf: all at once)."),
          concurrency: int = typer.Option(0, help="At most this many in flight (0: no limit)."),
          prompt_words: int = typer.Option(32, help="Words per prompt after any shared prefix."),
          max_tokens: int = typer.Option(32, help="Tokens generated per request (ignore_eos)."),
          shared_prefix_words: int = typer.Option(0, help="A shared prefix of this many words per group (0: none)."),
          prefix_groups: int = typer.Option(4, help="Distinct shared prefixes."),
          session_ids: bool = typer.Option(False, help="Send x-session-id per prefix group."),
          goodput: list[str] = typer.Option([], help="SLOs in ms, e.g. --goodput ttft:500 --goodput tpot:50."),
          seed: int = typer.Option(0, help="Seed of the prompts and arrivals."),
          as_json: bool = JSON) -> None:
    """Send the workload and print TTFT, TPOT, ITL and end-to-end percentiles, throughput and goodput."""
    if target not in TARGETS:
        raise typer.BadParameter(f"must be one of {', '.join(TARGETS)}", param_hint="--target")
    try:
        slos = parse_slos(goodput)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--goodput") from None
    from pylon.client import Client

    c = Client(_opts.get("address"), _opts.get("token"))
    address = url or c.address
    if target == "http" and not url:
        raise typer.BadParameter("--target http needs --url (the gateway's OpenAI base URL, .../v1)", param_hint="--url")
    workload = Workload(num_prompts, prompt_words, max_tokens, shared_prefix_words, prefix_groups, seed)
    summary = asyncio.run(run(Target(target, address, c.token, deployment), workload, rate, concurrency,
                              session_ids, slos))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    else:
        typer.echo(report(summary))
    if summary["failed"]:
        err.print(f"{summary['failed']} request(s) failed: {', '.join(summary['errors'])}", markup=False)
        raise typer.Exit(1)
