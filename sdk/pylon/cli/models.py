"""`pylon models ...`: register, create, update, list, get, resolve, versions, download, alias
set|get|history|delete, lineage, archive, delete, import/export of local (e.g. Hugging Face)
model directories (the verbs of ``client.models``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from pylon.cli._common import JSON, LIMIT, client, console, emit, err, limit_of
from pylon.resources.models import format_label

models_app = typer.Typer(help="Register models, versions and aliases; download artifacts.", no_args_is_help=True)
alias_app = typer.Typer(help="Aliases (prod, canary, ...) that point at a version.", no_args_is_help=True)
models_app.add_typer(alias_app, name="alias")
_VERSION_COLUMNS = ["name", "state", "format", "digest", "aliases", "deployments", "metrics"]


def _pairs(items: list[str], what: str, cast: Callable[[str], object] = str) -> dict:  # type: ignore[type-arg]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} must be KEY=VALUE, got {item!r}")
        try:
            out[key] = cast(value)
        except ValueError:
            raise typer.BadParameter(f"{what} {key} must be a number, got {value!r}") from None
    return out


@contextlib.contextmanager
def _bar(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    if quiet:
        yield None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total or None)


FOLLOW = typer.Option(False, help="Upload what symlinks out of the directory point at (a Hugging Face cache "
                                   "snapshot); without it such a link is refused.")


@models_app.command("register")
def models_register(
    name: str = typer.Argument(..., help="Model id (created if new)."),
    path: Optional[str] = typer.Argument(None, help="Local directory or file to upload."),
    source_uri: str = typer.Option("", help="Instead of PATH: an object prefix the platform holds (a job's output)."),
    format: Optional[str] = typer.Option(None, help="hf_transformers, safetensors, torch, onnx, other (default: "
                                                    "detected from the files; hf_transformers for --source-uri)."),
    metric: list[str] = typer.Option([], help="KEY=NUMBER, repeatable."),
    tag: list[str] = typer.Option([], help="KEY=VALUE, repeatable."),
    description: str = "", job: str = typer.Option("", help="Job that produced it (lineage)."),
    base_model: str = typer.Option("", help="Version it was fine-tuned from (lineage)."),
    follow_symlinks: bool = FOLLOW,
    as_json: bool = JSON,
) -> None:
    """Register a new version from local files (uploaded in parallel, straight to object storage)
    or from an object prefix already on the platform (copied server-side)."""
    if bool(path) == bool(source_uri):
        raise typer.BadParameter("give exactly one of PATH and --source-uri")
    if format is not None:
        try:
            format_label(format)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--format") from None
    with _bar("uploading", as_json or not path) as progress:
        v = client().models.register(name, path, source_uri=source_uri, format=format, metrics=_pairs(metric, "--metric", float),
                                     tags=_pairs(tag, "--tag"), description=description, job=job, base_model=base_model,
                                     progress=progress, follow_symlinks=follow_symlinks)
    emit(v, as_json, ["name", "version", "format", "digest"])


@models_app.command("import")
def models_import(name: str, directory: str, description: str = "", follow_symlinks: bool = FOLLOW,
                  as_json: bool = JSON) -> None:
    """Import a local Hugging Face-format model directory (config.json + weights) as a new version."""
    with _bar("importing", as_json) as progress:
        v = client().models.register(name, directory, format="hf_transformers", description=description, progress=progress,
                                     follow_symlinks=follow_symlinks)
    emit(v, as_json, ["name", "version", "format", "digest"])


@models_app.command("export")
def models_export(uri: str = typer.Argument(..., help="models:/name@alias, models:/name/versions/N or models:/name/latest"),
                  dest: str = typer.Argument(..., help="Directory to write (plain, editable files)."),
                  quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Write a version's files to a local directory (e.g. to load with transformers)."""
    with _bar("downloading", quiet) as progress:
        out = client().models.export(uri, dest, progress=progress)
    console.print(out)


@models_app.command("download")
def models_download(uri: str = typer.Argument(..., help="models:/name@alias, models:/name/versions/N or models:/name/latest"),
                    dest: Optional[str] = typer.Option(None, help="Directory (default: inside the local cache)."),
                    verify: str = typer.Option("crc32c", help="crc32c: against the checksum the registry took when "
                                               "it verified the sha256; sha256: recompute the sha256 (5x the CPU)."),
                    quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Download a version (verified, resumable, cached by digest); prints the directory."""
    with _bar("downloading", quiet) as progress:
        out = client().models.download(uri, dest, verify=verify, progress=progress)
    console.print(out)


@models_app.command("create")
def models_create(name: str, description: str = "", tag: list[str] = typer.Option([], help="KEY=VALUE, repeatable."),
                  as_json: bool = JSON) -> None:
    """Create an empty model (`pylon models register` also creates one with its first version)."""
    emit(client().models.create(name, description=description, tags=_pairs(tag, "--tag")), as_json,
         ["name", "description", "tags", "etag"])


@models_app.command("update")
def models_update(name: str, description: Optional[str] = typer.Option(None, help="New description."),
                  tag: Optional[list[str]] = typer.Option(None, help="KEY=VALUE, repeatable; replaces all tags."),
                  protect: Optional[list[str]] = typer.Option(None, help="Alias only maintainers may move "
                                                                       "(repeatable; replaces the list)."),
                  etag: str = typer.Option("", help="Change only if the model still has this etag."),
                  as_json: bool = JSON) -> None:
    """Change a model's description, tags or protected aliases."""
    emit(client().models.update(name, description=description, tags=None if tag is None else _pairs(tag, "--tag"),
                                protected_aliases=protect, etag=etag), as_json,
         ["name", "description", "tags", "protected_aliases", "etag"])


@models_app.command("list")
def models_list(filter: str = typer.Option("", help="e.g. 'tags.team=nlp'"), limit: int = LIMIT,
                as_json: bool = JSON) -> None:
    """List models."""
    emit(client().models.list(filter=filter, limit=limit_of(limit)), as_json, ["name", "latest_version", "aliases", "tags"])


@models_app.command("get")
def models_get(name: str, version: Optional[str] = typer.Argument(None, help="A number or 'latest'."),
               as_json: bool = JSON) -> None:
    """Show a model, or one version."""
    emit(client().models.get(name, version), as_json)


@models_app.command("resolve")
def models_resolve(uri: str = typer.Argument(..., help="models:/name@alias, models:/name/versions/N or models:/name/latest"),
                   as_json: bool = JSON) -> None:
    """Show the version a models:/ URI points at now."""
    emit(client().models.resolve(uri), as_json, ["name", "version", "state", "digest"])


@models_app.command("versions")
def models_versions(name: str = typer.Argument("-", help="Model id, or '-' to search every model."),
                    filter: str = typer.Option("", help="e.g. 'metrics.loss<2 AND tags.stage=eval AND alias:prod "
                                                        "AND create_time>2026-01-01'"),
                    order_by: str = typer.Option("", help="'version desc' (default), 'create_time', 'metrics.loss asc'"),
                    show_deleted: bool = typer.Option(False, "--all", help="Include deleted versions."),
                    limit: int = LIMIT, page_token: str = typer.Option("", help="Resume where a listing stopped."),
                    as_json: bool = JSON) -> None:
    """List versions (newest first) with filters and ordering."""
    versions = client().models.versions(name, filter=filter, order_by=order_by, show_deleted=show_deleted,
                                        limit=limit_of(limit), page_token=page_token)
    emit(versions, as_json, _VERSION_COLUMNS)
    if versions.next_page_token and not as_json:
        err.print(f"more: --page-token {versions.next_page_token}")


@alias_app.command("set")
def alias_set(name: str, alias: str, version: int,
              etag: str = typer.Option("", help="Move only if the alias still has this etag (compare-and-swap)."),
              as_json: bool = JSON) -> None:
    """Point ALIAS at VERSION."""
    emit(client().models.set_alias(name, alias, version, etag=etag), as_json)


@alias_app.command("get")
def alias_get(name: str, alias: str, as_json: bool = JSON) -> None:
    """Show where an alias points (and its etag)."""
    emit(client().models.get_alias(name, alias), as_json)


@alias_app.command("history")
def alias_history(name: str, alias: str, limit: int = LIMIT, as_json: bool = JSON) -> None:
    """Every move of an alias, newest first: who, when, from, to."""
    emit(client().models.alias_history(name, alias, limit=limit_of(limit)), as_json,
         ["time", "actor", "from_version", "to_version"])


@alias_app.command("delete")
def alias_delete(name: str, alias: str, etag: str = "") -> None:
    """Remove an alias (kept in its history)."""
    client().models.delete_alias(name, alias, etag=etag)


@models_app.command("archive")
def models_archive(name: str, version: int, restore: bool = typer.Option(False, help="Back to READY."),
                   as_json: bool = JSON) -> None:
    """Archive a version (it stays readable; aliases cannot point at it)."""
    emit(client().models.archive(name, version, restore=restore), as_json, ["name", "state"])


@models_app.command("delete-version")
def models_delete_version(name: str, version: int) -> None:
    """Delete a version (maintainer role; refused while an alias or deployment uses it)."""
    client().models.delete_version(name, version)


@models_app.command("delete")
def models_delete(name: str) -> None:
    """Delete a model whose versions are all deleted (maintainer role)."""
    client().models.delete(name)


@models_app.command("lineage")
def models_lineage(name: str, version: str, as_json: bool = JSON) -> None:
    """Dataset -> job -> checkpoint -> model version -> deployments."""
    graph = client().models.lineage(name, version)
    if as_json:
        emit(graph, True)
        return
    for e in graph.edges:
        console.print(f"{e.source}  ->  {e.target}", markup=False)
