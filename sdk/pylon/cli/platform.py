"""Platform commands: up, down, status, demo, generate, and admin (API keys: create-key,
list-keys, delete-key; whoami; reindex; tenants' serving limits: set-serving-limits,
get-serving-limits)."""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

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
       random_ports: bool = typer.Option(False, help="Pick free ports (services and Ray) instead of 50051-50054.")
       ) -> None:
    """Run the whole platform on this machine (Redis, object store, Ray, four services) and
    restart any of its processes that dies, until Ctrl-C or `pylon down`."""
    from pylon_services.localstack.detach import process_alive
    from pylon_services.up import Platform, pylon_home, read_state, wait_ready
    from pylon_services.up import detach as start_detached

    state = read_state()
    if state:
        supervisor = state.get("supervisor_pid")
        if supervisor and process_alive(supervisor):
            err.print("a platform is already running here (see `pylon status`; stop it with `pylon down`)")
        else:
            err.print("a platform's state is left from a `pylon up` that is gone: `pylon down` cleans it up")
        raise typer.Exit(1)
    console.print("Starting Pylon…")
    if detach:
        proc, log_path, offset = start_detached(s3=s3, random_ports=random_ports)
        try:
            _print_ready(wait_ready(pylon_home(), proc, log_path, offset, _step))
        except (RuntimeError, TimeoutError) as e:
            err.print(str(e))
            raise typer.Exit(1) from None
        return
    platform = Platform(s3=s3, fixed_ports=not random_ports, on_step=_step)
    platform.serve(on_ready=lambda st: _print_ready(st, "Ctrl-C stops everything."))


def _step(line: str) -> None:
    console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def _print_ready(state: dict[str, Any], then: str = "") -> None:
    for svc, addr in state["addresses"].items():
        console.print(f"  {svc:<12} {addr}  SERVING")
    if state.get("openai_base_url"):
        console.print(f"  {'openai':<12} {state['openai_base_url']}  (the gateway's OpenAI-compatible API)")
    console.print(f"\nReady in {state['startup_s']}s.\n  export PYLON_ADDRESS={state['address']}\n"
                  f"  export PYLON_TOKEN={state['admin_key']}   # bootstrap admin key")
    if then:
        console.print(then)


@app.command()
def down() -> None:
    """Stop the platform `pylon up` started (its supervisor stops every process in order)."""
    from pylon_services.up import down as stop_all

    stopped = stop_all()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(as_json: bool = JSON) -> None:
    """Health of each service of the local platform (or of $PYLON_ADDRESS); for a local
    `pylon up`, also each process's state and restarts."""
    from pylon.client import local_platform_state
    from pylon.health import check_health

    c = client()
    try:
        endpoints = c.endpoints()
    except PylonError as e:
        err.print(f"platform unreachable at {c.address}: {e}")
        raise typer.Exit(1) from None
    rows: list[dict[str, Any]] = [{"service": s, "address": a, "health": check_health(a)}
                                  for s, a in sorted(endpoints.items())]
    state = local_platform_state()
    if state and c.address in state.get("addresses", {}).values():
        rows = _with_processes(rows, state)
    emit(rows, as_json)
    if any(r["health"] != "SERVING" for r in rows if r["address"]):
        raise typer.Exit(1)


def _with_processes(rows: list[dict[str, Any]], state: dict[str, Any]) -> list[dict[str, Any]]:
    """Add what the supervisor of a local `pylon up` recorded: pid, state and restarts of every
    process it runs (rows without an address are processes without a gRPC port)."""
    from pylon_services.localstack.detach import process_alive

    procs: dict[str, dict[str, Any]] = state.get("processes", {})
    by_name = {r["service"]: r for r in rows}
    for name, p in procs.items():
        row = by_name.get(name)
        if row is None:
            row = by_name[name] = {"service": name, "address": "", "health": "-"}
        row.update(pid=p.get("pid"), state=p.get("state"), restarts=p.get("restarts", 0))
    sup = state.get("supervisor_pid")
    by_name["supervisor"] = {"service": "supervisor", "address": "", "health": "-", "pid": sup,
                             "state": "running" if sup and process_alive(sup) else "gone", "restarts": 0}
    return list(by_name.values())


@app.command()
def demo(steps: int = typer.Option(300, help="Training steps."),
         prompt: str = typer.Option("Return the ", help="Prompt for the generation step.")) -> None:
    """Run the walking skeleton end to end (starts a platform if none is running)."""
    from pylon.demo import run_demo
    from pylon_services.up import Platform, read_state

    platform = None
    state = read_state()
    if not state and not _opts.get("address"):
        platform = Platform(on_step=lambda m: console.print(f"  {m}", soft_wrap=True))
        console.print("No platform running: starting one (`pylon up`)…")
        state = platform.start()
        console.print(f"  platform ready in {state['startup_s']}s")
    # The gateway's HTTP API of the local platform (another platform's: PYLON_OPENAI_BASE_URL).
    openai_base_url = os.environ.get("PYLON_OPENAI_BASE_URL") or (state or {}).get("openai_base_url", "")
    try:
        with client() as admin:
            if admin.admin.whoami().role == "admin":  # work as a tenant, like a user would
                _, token = admin.admin.create_key("demo", "editor", "pylon demo")
                console.print("  created an editor API key for tenant 'demo'")
            else:
                token = admin.token
        with Client(_opts.get("address"), token) as c:
            run_demo(c, steps=steps, prompt=prompt, openai_base_url=openai_base_url,
                     out=lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
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


_LIMIT_COLUMNS = ["tenant", "requests_per_min", "tokens_per_min", "key_requests_per_min", "key_tokens_per_min",
                  "max_concurrent", "priority", "weight", "overridden"]


@admin_app.command("set-serving-limits")
def set_serving_limits(
        tenant: str,
        requests_per_min: Optional[int] = typer.Option(None, help="The tenant's requests a minute (0: unlimited)."),
        tokens_per_min: Optional[int] = typer.Option(None, help="Its prompt plus completion tokens a minute."),
        key_requests_per_min: Optional[int] = typer.Option(None, help="Each of its API keys' requests a minute."),
        key_tokens_per_min: Optional[int] = typer.Option(None, help="Each of its API keys' tokens a minute."),
        max_concurrent: Optional[int] = typer.Option(None, help="Its requests queued or running at once."),
        priority: Optional[str] = typer.Option(None, help="low, normal or high: the default and the most it may ask."),
        weight: Optional[float] = typer.Option(None, help="Its share of a deployment's fair queue."),
        as_json: bool = JSON) -> None:
    """Replace a tenant's serving limits (admin key): the options given override the gateway's
    defaults, the others follow them; none given returns the tenant to the defaults."""
    given = {k: v for k, v in (("requests_per_min", requests_per_min), ("tokens_per_min", tokens_per_min),
                               ("key_requests_per_min", key_requests_per_min),
                               ("key_tokens_per_min", key_tokens_per_min), ("max_concurrent", max_concurrent),
                               ("priority", priority), ("weight", weight)) if v is not None}
    emit(client().admin.set_serving_limits(tenant, **given), as_json, _LIMIT_COLUMNS)


@admin_app.command("get-serving-limits")
def get_serving_limits(tenant: str = typer.Argument("", help="Default: the key's own tenant."),
                       as_json: bool = JSON) -> None:
    """A tenant's serving limits in effect, and which are its own overrides."""
    emit(client().admin.get_serving_limits(tenant), as_json, _LIMIT_COLUMNS)


@app.command()
def generate(deployment: str, prompt: str, max_tokens: int = 64, temperature: float = 0.8,
             seed: Optional[int] = None) -> None:
    """Stream a completion from a deployment (or a model as NAME@ALIAS)."""
    for piece in client().generate_stream(deployment, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def chat(deployment: str, message: str, system: str = typer.Option("", help="A system message first."),
         max_tokens: int = 64, temperature: float = 0.8, seed: Optional[int] = None) -> None:
    """Stream the reply to MESSAGE through the model's chat template (DEPLOYMENT, or a model as NAME@ALIAS)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    for piece in client().chat_stream(deployment, messages, max_tokens=max_tokens, temperature=temperature, seed=seed):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


def register(top: typer.Typer) -> None:
    """Mount the platform commands on the top-level app."""
    for cmd in app.registered_commands:
        top.registered_commands.append(cmd)
