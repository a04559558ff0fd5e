"""`pylon jobs ...`."""

from __future__ import annotations

import os
from datetime import UTC

import typer
import yaml

from pylon.cli._common import JSON, client, console, emit, err

jobs_app = typer.Typer(help="Submit and follow GPU jobs.", no_args_is_help=True)


@jobs_app.command("submit")
def jobs_submit(spec_file: str, detach: bool = typer.Option(False, "--detach", help="Return after queueing."),
                as_json: bool = JSON) -> None:
    """Submit a job from a YAML spec; streams its logs and exits with its result unless --detach."""
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
    for line in c.jobs.logs(job.name, follow=True):
        console.print(line, markup=False, highlight=False)
    job = c.jobs.wait(job.name)
    emit(job, as_json, ["name", "state", "message", "exit_code", "output_uri"])
    raise typer.Exit(0 if job.state == "succeeded" else 1)


@jobs_app.command("list")
def jobs_list(state: list[str] = typer.Option([], help="Only jobs in this state (repeatable)."), as_json: bool = JSON) -> None:
    """List jobs, newest first."""
    emit(client().jobs.list(states=state), as_json, ["name", "state", "gpu_type", "message"])


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
    console.print(f"position {why['position']} in its queue", markup=False)
    if why["estimated_start"]:
        from datetime import datetime

        start = datetime.fromtimestamp(why["estimated_start"], tz=UTC).isoformat(timespec="seconds")
        console.print(f"estimated start {start}", markup=False)
    for reason in why["reasons"]:
        console.print(f"- {reason}", markup=False)
