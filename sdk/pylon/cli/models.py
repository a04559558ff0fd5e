"""`pylon models ...`."""

from __future__ import annotations

from typing import Optional

import typer

from pylon.cli._common import JSON, client, console, emit

models_app = typer.Typer(help="Register models, versions and aliases.", no_args_is_help=True)


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


