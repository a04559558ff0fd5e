"""Platform commands: up, down, status, demo, generate, and admin (API keys: create-key,
list-keys, delete-key; whoami; reindex)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from pylon.cli._common import JSON, LIMIT, _opts, client, console, emit, err, limit_of
from pylon.client import Client
from pylon.errors import PylonError

app = typer.Typer()  # commands here are mounted on the top-level app by register()
admin_app = typer.Typer(help="API keys and identity.", no_args_is_help=True)


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
            if admin.admin.whoami().role == "admin":  # work as a tenant, like a user would
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
def create_key(tenant: str, role: str = typer.Option("editor", help="viewer, editor, maintainer or admin."),
               description: str = "", as_json: bool = JSON) -> None:
    """Issue an API key for a tenant (needs an admin key). The token is shown once."""
    name, token = client().admin.create_key(tenant, role, description)
    emit({"name": name, "tenant": tenant, "role": role, "token": token}, as_json)


@admin_app.command("list-keys")
def list_keys(tenant: str = typer.Option("", help="Only this tenant's keys."), limit: int = LIMIT,
              as_json: bool = JSON) -> None:
    """List API keys (never their secrets; needs an admin key)."""
    emit(client().admin.list_keys(tenant, limit=limit_of(limit)), as_json,
         ["name", "tenant", "role", "description", "create_time"])


@admin_app.command("delete-key")
def delete_key(name: str = typer.Argument(..., help="apiKeys/KEY_ID or KEY_ID."), as_json: bool = JSON) -> None:
    """Revoke an API key (needs an admin key); services that cached it refuse it within
    PYLON_AUTH_CACHE_TTL_S seconds."""
    client().admin.delete_key(name)
    emit({"deleted": name}, as_json, ["deleted"])


@admin_app.command()
def reindex(as_json: bool = JSON) -> None:
    """Rebuild the registry's index from object storage, the source of truth (admin key)."""
    emit(client().admin.reindex(), as_json)


@admin_app.command()
def whoami(as_json: bool = JSON) -> None:
    """Tenant and role of the key in use."""
    emit(client().admin.whoami(), as_json)


@app.command()
def generate(deployment: str, prompt: str, max_tokens: int = 64, temperature: float = 0.8,
             seed: Optional[int] = None) -> None:
    """Stream a completion from a deployment."""
    for piece in client().generate_stream(deployment, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def register(top: typer.Typer) -> None:
    """Mount the platform commands on the top-level app."""
    for cmd in app.registered_commands:
        top.registered_commands.append(cmd)
