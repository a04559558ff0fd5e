"""`pylon deployments ...`."""

from __future__ import annotations

import typer

from pylon.cli._common import JSON, client, console, emit

deploy_app = typer.Typer(help="Serve model versions through the gateway.", no_args_is_help=True)


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
