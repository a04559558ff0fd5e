"""`pylon jobs ...`: submit, list, get, logs, wait, cancel, explain, metrics (the verbs of
``client.jobs``)."""

from __future__ import annotations

import os
import re
from typing import Any

import typer
import yaml
from typer.core import TyperCommand

from pylon.cli._common import JSON, LIMIT, client, console, emit, err, limit_of
from pylon.types import TrainerStatus

jobs_app = typer.Typer(help="Submit and follow GPU jobs.", no_args_is_help=True)


class _ArgvCommand(TyperCommand):
    """A command that keeps everything after ``--`` apart, as the job's argv (``ray job submit``
    style), before its own options and arguments are parsed: click would otherwise hand the first
    word of the argv to the optional spec-file argument."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        if "--" in args:
            at = args.index("--")
            ctx.meta["pylon.argv"] = args[at + 1:]
            args = args[:at]
        return super().parse_args(ctx, args)


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9,
          "T": 10**12, "": 1}
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|K|M|G|T|)")


def memory_bytes(text: str) -> int:
    """A Kubernetes-style quantity ("2Gi", "512Mi", "1G", "1000") as bytes."""
    m = _QUANTITY.fullmatch(text.strip())
    if m is None:
        raise typer.BadParameter(f"{text!r} is not a memory size like 2Gi, 512Mi or 1G", param_hint="--memory")
    return int(float(m[1]) * _UNITS[m[2]])


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        out[key] = value
    return out


@jobs_app.command("submit", cls=_ArgvCommand)
def jobs_submit(
    ctx: typer.Context,
    spec_file: str | None = typer.Argument(None, help="A YAML job spec (or give the command after --)."),
    working_dir: str | None = typer.Option(None, "--working-dir", help="Directory to run the command in (uploaded)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Workers (one process each)."),
    gpus: float = typer.Option(0.0, "--gpus", min=0, help="GPUs per worker."),
    gpu_type: list[str] = typer.Option([], "--gpu-type", help="Acceptable GPU type, in order of preference (repeatable)."),
    cpus: float = typer.Option(0.0, "--cpus", min=0, help="CPUs per worker (default 1)."),
    memory: str = typer.Option("", "--memory", help="Memory per worker, e.g. 2Gi."),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the command (repeatable)."),
    pip: list[str] = typer.Option([], "--pip", help="A pip requirement to install first (repeatable)."),
    dataset: list[str] = typer.Option([], "--dataset", help="A dataset version the command may read (repeatable)."),
    name: str = typer.Option("", "--name", help="Display name."),
    detach: bool = typer.Option(False, "--detach", help="Return after queueing."),
    as_json: bool = JSON,
) -> None:
    """Submit a job from a YAML spec, or a command without one:
    `pylon jobs submit --working-dir . --workers 2 --gpus 1 -- python train.py --lr 3e-4`.
    Streams its logs and exits with its result unless --detach. With --json the logs go to
    stderr and stdout holds only the final job as JSON."""
    argv: list[str] = ctx.meta.get("pylon.argv", [])
    c = client()
    if argv:
        if spec_file is not None:
            raise typer.BadParameter("give either a spec file or a command after --, not both")
        command: dict[str, Any] = {"argv": argv, "env": _env(env), "pip_requirements": pip, "datasets": dataset}
        if working_dir:
            command["working_dir"] = working_dir  # the SDK uploads it
        job = c.jobs.submit({"workers": workers, "display_name": name, "command": command, "resources": {
            "gpus": gpus, "gpu_types": gpu_type, "cpus": cpus, "memory_bytes": memory_bytes(memory) if memory else 0}})
    else:
        if spec_file is None:
            raise typer.BadParameter("give a spec file, or the command to run after --")
        given = [f for f, v in (("--working-dir", working_dir), ("--gpus", gpus), ("--gpu-type", gpu_type),
                                ("--cpus", cpus), ("--memory", memory), ("--env", env), ("--pip", pip),
                                ("--dataset", dataset), ("--name", name), ("--workers", workers != 1)) if v]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} describe a command given after --; a spec file says it all")
        job = c.jobs.submit(_read_spec(spec_file))
    if detach:
        emit(job, as_json, ["name", "state", "message"])
        return
    err.print(f"submitted {job.name}")
    out = err if as_json else console  # stdout stays one JSON document
    for line in c.jobs.logs(job.name, follow=True):
        out.print(line, markup=False, highlight=False)
    job = c.jobs.wait(job.name)
    emit(job, as_json, ["name", "state", "message", "exit_code", "output_uri"])
    raise typer.Exit(0 if job.state == "succeeded" else 1)


def _read_spec(spec_file: str) -> dict[str, Any]:
    with open(spec_file) as f:
        spec = yaml.safe_load(f)
    command = spec.get("command") if isinstance(spec, dict) else None
    if isinstance(command, dict) and command.get("working_dir"):  # relative to the spec file
        command["working_dir"] = os.path.join(os.path.dirname(os.path.abspath(spec_file)), command["working_dir"])
    return spec if isinstance(spec, dict) else {}


@jobs_app.command("list")
def jobs_list(state: list[str] = typer.Option([], help="Only jobs in this state (repeatable)."), limit: int = LIMIT,
              as_json: bool = JSON) -> None:
    """List jobs, newest first."""
    emit(client().jobs.list(states=state, limit=limit_of(limit)), as_json, ["name", "state", "gpu_type", "message"])


@jobs_app.command("get")
def jobs_get(name: str, as_json: bool = JSON) -> None:
    """Show a job; a running trainer's progress (percent, ETA, loss, tokens/s, MFU) too."""
    job = client().jobs.get(name)
    columns = ["name", "state", "message", "attempt", "exit_code", "gpu_type", "output_uri"]
    if as_json or job.trainer_status is None:
        emit(job, as_json, columns)
        return
    emit({**{c: getattr(job, c) for c in columns}, **progress_columns(job.trainer_status)}, False)


def progress_columns(t: TrainerStatus) -> dict[str, str]:
    """A trainer status as the few columns a person reads at a glance."""
    m = t.metrics

    def metric(key: str, fmt: str) -> str:
        return format(m[key], fmt) if key in m else "-"

    pct = f"{t.progress_percentage}%" if t.progress_percentage is not None else f"step {t.step}"
    eta = "-" if t.estimated_remaining_seconds is None else _duration(t.estimated_remaining_seconds)
    mfu = f"{100 * m['mfu']:.1f}%" if "mfu" in m else "-"
    return {"progress": pct, "eta": eta, "loss": metric("loss", ".4f"), "tokens/s": metric("tokens_per_s", ",.0f"),
            "mfu": mfu}


def _duration(seconds: int) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@jobs_app.command("logs")
def jobs_logs(name: str, follow: bool = typer.Option(False, "--follow", "-f")) -> None:
    """Print a job's log; -f follows it until the job ends."""
    for line in client().jobs.logs(name, follow=follow):
        console.print(line, markup=False, highlight=False)


@jobs_app.command("wait")
def jobs_wait(name: str, as_json: bool = JSON) -> None:
    """Wait for a job to end; exit code 0 only if it succeeded."""
    job = client().jobs.wait(name)
    emit(job, as_json, ["name", "state", "message", "exit_code"])
    raise typer.Exit(0 if job.state == "succeeded" else 1)


@jobs_app.command("cancel")
def jobs_cancel(name: str, as_json: bool = JSON) -> None:
    """Cancel a job."""
    emit(client().jobs.cancel(name), as_json, ["name", "state", "message"])


@jobs_app.command("explain")
def jobs_explain(name: str, as_json: bool = JSON) -> None:
    """Why a pending job waits: the reasons, its position in its queue and an estimated start."""
    why = client().jobs.explain(name)
    if as_json:
        emit(why, True)
        return
    console.print(f"position {why.position} in its queue", markup=False)
    if why.estimated_start_time:
        console.print(f"estimated start {why.estimated_start_time.isoformat(timespec='seconds')}", markup=False)
    for reason in why.reasons:
        console.print(f"- {reason}", markup=False)


@jobs_app.command("metrics")
def jobs_metrics(name: str, key: list[str] = typer.Option([], "--key", help="Only this metric (repeatable)."),
                 as_json: bool = JSON) -> None:
    """The metrics a job reported (step, loss, throughput...), in report order."""
    emit(client().jobs.metrics(name, keys=key), as_json, ["key", "step", "value", "time"])
