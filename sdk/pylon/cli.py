"""The ``pylon`` command line: the same verbs as the SDK and the RPCs.

Every command takes ``--json`` for machine output. Address and key come from ``--address`` /
``--token``, ``PYLON_ADDRESS`` / ``PYLON_TOKEN``, or the platform a local ``pylon up`` started.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from pylon.client import Client
from pylon.errors import PylonError

app = typer.Typer(help="Pylon: datasets, jobs, models and deployments on one ML platform.", no_args_is_help=True)
datasets_app = typer.Typer(help="Upload and inspect datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Submit and follow GPU jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Register models, versions and aliases.", no_args_is_help=True)
deploy_app = typer.Typer(help="Serve model versions through the gateway.", no_args_is_help=True)
admin_app = typer.Typer(help="API keys and identity.", no_args_is_help=True)
for sub, name in ((datasets_app, "datasets"), (jobs_app, "jobs"), (models_app, "models"),
                  (deploy_app, "deployments"), (admin_app, "admin")):
    app.add_typer(sub, name=name)

console = Console()
err = Console(stderr=True)
_opts: dict[str, Any] = {}


@app.callback()
def _global(address: Optional[str] = typer.Option(None, help="Any service's host:port (default $PYLON_ADDRESS)."),
            token: Optional[str] = typer.Option(None, help="API key (default $PYLON_TOKEN).")) -> None:
    _opts.update(address=address, token=token)


def client() -> Client:
    return Client(_opts.get("address"), _opts.get("token"))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def emit(obj: Any, as_json: bool, columns: list[str] | None = None) -> None:
    """Print a result: JSON, a table for lists, or key/value lines."""
    data = _plain(obj)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    cols = columns or (list(rows[0].keys()) if rows else [])
    table = Table(*cols)
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    console.print(table)


JSON = typer.Option(False, "--json", help="Machine-readable output.")


# -- platform ---------------------------------------------------------------------------------
@app.command()
def up(s3: bool = typer.Option(False, "--s3", help="Use a local SeaweedFS S3 server instead of a directory."),
       detach: bool = typer.Option(False, "--detach", "-d", help="Return once serving; stop later with `pylon down`."),
       random_ports: bool = typer.Option(False, help="Pick free ports instead of 50051-50054.")) -> None:
    """Run the whole platform on this machine (Redis, object store, Ray, four services)."""
    import signal
    import threading

    from pylon_services.up import Platform, read_state

    if read_state():
        err.print("a platform is already running here (see `pylon status`; stop it with `pylon down`)")
        raise typer.Exit(1)
    platform = Platform(s3=s3, fixed_ports=not random_ports, on_step=lambda m: console.print(f"  {m}"))
    console.print("Starting Pylon…")
    state = platform.start()
    for svc, addr in state["addresses"].items():
        console.print(f"  {svc:<12} {addr}  SERVING")
    console.print(f"\nReady in {state['startup_s']}s.\n  export PYLON_ADDRESS={state['address']}\n"
                  f"  export PYLON_TOKEN={state['admin_key']}   # bootstrap admin key")
    if detach:
        return
    console.print("Ctrl-C stops everything.")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    console.print("Stopping…")
    platform.stop()


@app.command()
def down() -> None:
    """Stop the platform a detached `pylon up` started."""
    from pylon_services.up import down as stop_all

    stopped = stop_all()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(as_json: bool = JSON) -> None:
    """Health of each service of the local platform (or of $PYLON_ADDRESS)."""
    from pylon.health import check_health

    c = client()
    try:
        endpoints = c.endpoints()
    except PylonError as e:
        err.print(f"platform unreachable at {c.address}: {e}")
        raise typer.Exit(1) from None
    rows = [{"service": s, "address": a, "health": check_health(a)} for s, a in sorted(endpoints.items())]
    emit(rows, as_json)
    if any(r["health"] != "SERVING" for r in rows):
        raise typer.Exit(1)


@app.command()
def demo(steps: int = typer.Option(300, help="Training steps."),
         prompt: str = typer.Option("Return the ", help="Prompt for the generation step.")) -> None:
    """Run the walking skeleton end to end (starts a platform if none is running)."""
    from pylon.demo import run_demo
    from pylon_services.up import Platform, read_state

    platform = None
    if not read_state() and not _opts.get("address"):
        platform = Platform(on_step=lambda m: console.print(f"  {m}", soft_wrap=True))
        console.print("No platform running: starting one (`pylon up`)…")
        state = platform.start()
        console.print(f"  platform ready in {state['startup_s']}s")
    try:
        with client() as admin:
            if admin.admin.whoami()["role"] == "admin":  # work as a tenant, like a user would
                _, token = admin.admin.create_key("demo", "editor", "pylon demo")
                console.print("  created an editor API key for tenant 'demo'")
            else:
                token = admin.token
        with Client(_opts.get("address"), token) as c:
            run_demo(c, steps=steps, prompt=prompt, out=lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    finally:
        if platform:
            console.print("Stopping the platform the demo started…")
            platform.stop()


# -- admin ------------------------------------------------------------------------------------
@admin_app.command("create-key")
def create_key(tenant: str, role: str = typer.Option("editor", help="viewer, editor or admin."),
               description: str = "", as_json: bool = JSON) -> None:
    """Issue an API key for a tenant (needs an admin key). The token is shown once."""
    name, token = client().admin.create_key(tenant, role, description)
    emit({"name": name, "tenant": tenant, "role": role, "token": token}, as_json)


@admin_app.command()
def whoami(as_json: bool = JSON) -> None:
    """Tenant and role of the key in use."""
    emit(client().admin.whoami(), as_json)


# -- datasets ---------------------------------------------------------------------------------
@datasets_app.command("upload")
def datasets_upload(path: str, name: str = typer.Option(..., "--name", help="Dataset id."),
                    format: Optional[str] = typer.Option(None, help="text or jsonl (default: from the extension)."),
                    description: str = "", as_json: bool = JSON) -> None:
    """Upload a file as a new dataset version."""
    from rich.progress import Progress

    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"uploading {path}", total=None)
        version = client().datasets.upload(path, name, format=format, description=description,
                                           progress=lambda done, total: bar.update(task, completed=done, total=total))
    emit(version, as_json, ["name", "digest", "record_count", "size_bytes", "deduplicated"])


@datasets_app.command("list")
def datasets_list(as_json: bool = JSON) -> None:
    """List datasets."""
    emit(client().datasets.list(), as_json, ["name", "latest_version", "description"])


@datasets_app.command("get")
def datasets_get(name: str, version: Optional[str] = typer.Option(None, help="A version number or 'latest'."),
                 as_json: bool = JSON) -> None:
    """Show a dataset or one of its versions."""
    emit(client().datasets.get(name, version), as_json)


# -- jobs -------------------------------------------------------------------------------------
@jobs_app.command("submit")
def jobs_submit(spec_file: str, detach: bool = typer.Option(False, "--detach", help="Return after queueing."),
                as_json: bool = JSON) -> None:
    """Submit a job from a YAML spec; streams its logs and exits with its result unless --detach."""
    with open(spec_file) as f:
        spec = yaml.safe_load(f)
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


# -- models -----------------------------------------------------------------------------------
@models_app.command("register")
def models_register(name: str, source_uri: str = typer.Option(..., help="Object prefix, e.g. a job's output_uri."),
                    job: str = "", as_json: bool = JSON) -> None:
    """Register the files under an object prefix as a new model version."""
    emit(client().models.register(name, source_uri, job=job), as_json, ["name", "version", "digest"])


@models_app.command("list")
def models_list(as_json: bool = JSON) -> None:
    """List models."""
    emit(client().models.list(), as_json, ["name", "latest_version", "aliases"])


@models_app.command("get")
def models_get(name: str, version: Optional[str] = None, as_json: bool = JSON) -> None:
    """Show a model, or one version."""
    emit(client().models.get(name, version), as_json)


@models_app.command("versions")
def models_versions(name: str, as_json: bool = JSON) -> None:
    """List a model's versions, newest first."""
    emit(client().models.versions(name), as_json, ["name", "state", "digest", "aliases", "deployments"])


@models_app.command("alias")
def models_alias(name: str, alias: str, version: Optional[int] = typer.Argument(None),
                 etag: str = typer.Option("", help="Move only if the alias still has this etag."),
                 as_json: bool = JSON) -> None:
    """Show an alias, or move it to VERSION."""
    emit(client().models.alias(name, alias, version, etag=etag), as_json)


@models_app.command("lineage")
def models_lineage(name: str, version: str, as_json: bool = JSON) -> None:
    """Dataset -> job -> checkpoint -> model version -> deployments."""
    graph = client().models.lineage(name, version)
    if as_json:
        emit(graph, True)
        return
    for e in graph.get("edges", []):
        console.print(f"{e['source']}  ->  {e['target']}", markup=False)


# -- deployments ------------------------------------------------------------------------------
@deploy_app.command("deploy")
def deployments_deploy(name: str, model_uri: str, replicas: int = 1, engine: str = "torch",
                       gpus: float = 0.0, wait: bool = True, as_json: bool = JSON) -> None:
    """Deploy models:/NAME@ALIAS as deployment NAME."""
    emit(client().deployments.deploy(name, model_uri, replicas=replicas, engine=engine, gpus=gpus, wait=wait),
         as_json, ["name", "state", "model_version", "message"])


@deploy_app.command("list")
def deployments_list(as_json: bool = JSON) -> None:
    """List deployments."""
    emit(client().deployments.list(), as_json, ["name", "state", "model_version", "replicas"])


@deploy_app.command("get")
def deployments_get(name: str, as_json: bool = JSON) -> None:
    """Show a deployment and its replicas."""
    emit(client().deployments.get(name), as_json)


@deploy_app.command("delete")
def deployments_delete(name: str) -> None:
    """Stop a deployment's replicas and remove it."""
    client().deployments.delete(name)
    console.print(f"deleted {name}")


@app.command()
def generate(deployment: str, prompt: str, max_tokens: int = 64, temperature: float = 0.8,
             seed: Optional[int] = None) -> None:
    """Stream a completion from a deployment."""
    for piece in client().generate_stream(deployment, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def main() -> None:
    try:
        app()
    except PylonError as e:
        err.print(f"error: {e}", markup=False)
        for v in e.violations:
            err.print(f"  {v.field}: {v.description}", markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
