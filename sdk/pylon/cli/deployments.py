"""`pylon deployments ...`: deploy, list, get, scale, delete (the verbs of ``client.deployments``)."""

from __future__ import annotations

import typer

from pylon.cli._common import JSON, LIMIT, client, emit, limit_of

deploy_app = typer.Typer(help="Serve model versions through the gateway.", no_args_is_help=True)
_COLUMNS = ["name", "state", "model_version", "replicas", "message"]


@deploy_app.command("deploy")
def deployments_deploy(name: str, model_uri: str, replicas: int = 1, engine: str = "torch",
                       gpus: float = 0.0, wait: bool = True, as_json: bool = JSON) -> None:
    """Deploy models:/NAME@ALIAS as deployment NAME."""
    emit(client().deployments.deploy(name, model_uri, replicas=replicas, engine=engine, gpus=gpus, wait=wait),
         as_json, ["name", "state", "model_version", "message"])


@deploy_app.command("list")
def deployments_list(limit: int = LIMIT, as_json: bool = JSON) -> None:
    """List deployments."""
    emit(client().deployments.list(limit=limit_of(limit)), as_json, _COLUMNS)


@deploy_app.command("models")
def deployments_models(as_json: bool = JSON) -> None:
    """What requests may name: each deployment, the version it serves, whether it is ready."""
    emit(client().deployments.models(), as_json, ["deployment", "model_uri", "model_version", "ready"])


@deploy_app.command("get")
def deployments_get(name: str, as_json: bool = JSON) -> None:
    """Show a deployment and its replicas."""
    emit(client().deployments.get(name), as_json)


@deploy_app.command("scale")
def deployments_scale(name: str, replicas: int = typer.Argument(..., help="Desired replicas, 1-16."),
                      etag: str = typer.Option("", help="Scale only if the deployment still has this etag "
                                                        "(see `pylon deployments get`)."),
                      as_json: bool = JSON) -> None:
    """Set the replica count: new replicas start as jobs, the highest-numbered ones are cancelled."""
    emit(client().deployments.scale(name, replicas, etag=etag), as_json, [*_COLUMNS, "etag"])


@deploy_app.command("delete")
def deployments_delete(name: str, as_json: bool = JSON) -> None:
    """Stop a deployment's replicas and remove it."""
    client().deployments.delete(name)
    emit({"deleted": name}, as_json, ["deleted"])
