"""`pylon datasets ...`."""

from __future__ import annotations

from typing import Optional

import typer

from pylon.cli._common import JSON, client, emit, err

datasets_app = typer.Typer(help="Upload and inspect datasets.", no_args_is_help=True)


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


