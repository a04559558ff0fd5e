"""`pylon jobs ...`: submit, list, get, logs, wait, cancel, explain, metrics (the verbs of
``client.jobs``)."""

from __future__ import annotations

import os

import typer
import yaml

from pylon.cli._common import JSON, LIMIT, client, console, emit, err, limit_of

jobs_app = typer.Typer(help="Submit and follow GPU jobs.", no_args_is_help=True)


@jobs_app.command("submit")
def jobs_submit(spec_file: str, detach: bool = typer.Option(False, "--detach", help="Return after queueing."),
                as_json: bool = JSON) -> None:
    """Submit a job from a YAML spec; streams its logs and exits with its result unless --detach.
    With --json the logs go to stderr and stdout holds only the final job as JSON."""
    with open(spec_file) as f:
        spec = yaml.safe_load(f)
    command = spec.get("command") if isinstance(spec, dict) else None
    if isinstance(command, dict) and command.get("working_dir"):  # relative to the spec file
        command["working_dir"] = os.path.join(os.path.dirname(os.path.abspath(spec_file)), command["working_dir"])
    c = client()
    job = c.jobs.submit(spec)
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


@jobs_app.command("list")
def jobs_list(state: list[str] = typer.Option([], help="Only jobs in this state (repeatable)."), limit: int = LIMIT,
              as_json: bool = JSON) -> None:
    """List jobs, newest first."""
    emit(client().jobs.list(states=state, limit=limit_of(limit)), as_json, ["name", "state", "gpu_type", "message"])


@jobs_app.command("get")
def jobs_get(name: str, as_json: bool = JSON) -> None:
    """Show a job."""
    emit(client().jobs.get(name), as_json, ["name", "state", "message", "attempt", "exit_code", "gpu_type", "output_uri"])


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
