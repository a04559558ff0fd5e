"""`pylon datasets ...`: create, delete, upload, import, list, versions, get, preview, rejects,
tokenize, and following operations (the verbs of ``client.datasets``)."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from pylon.cli._common import JSON, LIMIT, client, console, emit, err, limit_of

datasets_app = typer.Typer(help="Upload, inspect and tokenize datasets (immutable, numbered versions).",
                           no_args_is_help=True)


def _json_option(value: Optional[str], what: str) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"{what} must be JSON: {e}") from e


def _op_bar(bar: Any, task: Any) -> Any:
    def update(op: Any) -> None:
        stage = op.metadata.get("stage") or op.metadata.get("state", "")
        bar.update(task, description=f"processing ({stage})", completed=max(op.progress, 0) * 100, total=100)
    return update


@datasets_app.command("upload")
def data_upload(
    path: str,
    name: str = typer.Option(..., "--name", help="Dataset id (created with its first version)."),
    format: Optional[str] = typer.Option(None, help="text, jsonl, csv or parquet (default: from the file name)."),
    compression: str = typer.Option("", help="gzip or zstd (default: from the file name)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Continue an interrupted upload of this file, sending only missing parts."),
    part_size_mb: int = typer.Option(16, help="Part size in MiB for direct uploads (>= 5)."),
    concurrency: int = typer.Option(8, help="Parts sent in parallel."),
    max_reject_rate: Optional[float] = typer.Option(None, help="Fail the version above this fraction of bad records "
                                                    "(default 0.1)."),
    recipe: Optional[str] = typer.Option(None, help='Cleaning recipe as JSON, e.g. \'{"scrub_email": true}\'.'),
    schema: Optional[str] = typer.Option(None, help="Schema as JSON (default: inferred)."),
    stream: bool = typer.Option(False, "--stream", help="Send through gRPC instead of straight to object storage."),
    description: str = "", as_json: bool = JSON,
) -> None:
    """Upload a file as a new version: hashed, sent in parallel parts straight to object storage
    (nothing is sent when the platform already holds the bytes), verified, then validated and
    cleaned on Ray. Bad records are quarantined (see `pylon datasets rejects`)."""
    from rich.progress import Progress

    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"uploading {path}", total=None)
        version = client().datasets.upload(
            path, name, format=format, compression=compression, description=description, resume=resume,
            part_size=part_size_mb << 20, concurrency=concurrency, max_reject_rate=max_reject_rate,
            recipe=_json_option(recipe, "--recipe"), schema=_json_option(schema, "--schema"),
            direct=False if stream else None, on_operation=_op_bar(bar, task),
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    emit(version, as_json, ["name", "digest", "record_count", "reject_count", "size_bytes", "deduplicated"])


@datasets_app.command("import")
def data_import(uris: list[str], name: str = typer.Option(..., "--name", help="Dataset id."),
                format: Optional[str] = typer.Option(None, help="text, jsonl, csv or parquet."),
                by_reference: bool = typer.Option(False, "--by-reference", help="Reference the objects in place."),
                as_json: bool = JSON) -> None:
    """Make a version from objects already in the platform's bucket (s3://bucket/key or keys)."""
    emit(client().datasets.import_objects(uris, name, format=format, by_reference=by_reference), as_json,
         ["name", "digest", "record_count", "reject_count", "source"])


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--label takes KEY=VALUE, not {v!r}")
        out[key] = value
    return out


@datasets_app.command("create")
def data_create(name: str, description: str = typer.Option("", help="What the dataset holds (<= 2048 chars)."),
                label: list[str] = typer.Option([], "--label", help="KEY=VALUE, repeatable (at most 64)."),
                as_json: bool = JSON) -> None:
    """Create an empty dataset (`pylon datasets upload` also creates one with its first version).
    Names: 1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter; a name in use,
    also by a deleted dataset, is refused."""
    emit(client().datasets.create(name, description=description, labels=_labels(label)), as_json,
         ["name", "description", "labels", "etag"])


@datasets_app.command("delete")
def data_delete(name: str, etag: str = typer.Option("", help="Delete only if the dataset is unchanged since "
                                                               "this etag (see `pylon datasets get`)."),
                yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
                as_json: bool = JSON) -> None:
    """Soft-delete a dataset: it and its versions disappear from list/get/preview and it takes
    no new versions; stored data stays, so jobs and models that use its versions keep working.
    The name is not reused. Refused while one of its uploads or tokenizations is running."""
    if not yes:
        typer.confirm(f"Delete dataset {name}?", abort=True, err=True)  # stdout stays the result
    client().datasets.delete(name, etag=etag)
    emit({"deleted": name}, as_json, ["deleted"])


@datasets_app.command("list")
def data_list(limit: int = LIMIT, as_json: bool = JSON) -> None:
    """List datasets."""
    emit(client().datasets.list(limit=limit_of(limit)), as_json, ["name", "latest_version", "description"])


@datasets_app.command("versions")
def data_versions(name: str, limit: int = LIMIT, as_json: bool = JSON) -> None:
    """List a dataset's versions."""
    emit(client().datasets.versions(name, limit=limit_of(limit)), as_json,
         ["name", "state", "record_count", "reject_count", "size_bytes", "digest"])


@datasets_app.command("get")
def data_get(name: str, version: Optional[str] = typer.Option(None, help="A version number or 'latest'."),
             as_json: bool = JSON) -> None:
    """Show a dataset, or one version's manifest (files, digests, counts, schema, profile, recipe)."""
    emit(client().datasets.get(name, version), as_json)


@datasets_app.command("preview")
def data_preview(name: str, version: str = typer.Option("latest", help="A version number or 'latest'."),
                 limit: int = typer.Option(10, help="Records to show."), as_json: bool = JSON) -> None:
    """Show the first cleaned records of a version."""
    records = client().datasets.preview(name, version, limit)
    if as_json:
        print(json.dumps(records, indent=2))
        return
    for r in records:
        console.print(json.dumps(r, ensure_ascii=False)[:500], markup=False)


@datasets_app.command("rejects")
def data_rejects(name: str, version: str = typer.Option("latest", help="A version number or 'latest'."),
                 limit: int = LIMIT, as_json: bool = JSON) -> None:
    """List the records validation rejected: file, line number, reason, raw text."""
    emit(client().datasets.rejects(name, version, limit=limit_of(limit)), as_json, ["path", "line", "reason", "raw"])


@datasets_app.command("tokenize")
def data_tokenize(name: str, version: str = typer.Option("latest", help="A version number or 'latest'."),
                  tokenizer: str = typer.Option("", help="Reuse this stored tokenizer, or train and store under it."),
                  vocab_size: int = typer.Option(8192, help="Vocabulary size when training."),
                  shard_tokens: int = typer.Option(1 << 20, help="Tokens per shard."), as_json: bool = JSON) -> None:
    """Train a byte-level BPE tokenizer (or reuse one) and write token shards for training."""
    from rich.progress import Progress

    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("tokenizing", total=None)
        result = client().datasets.tokenize(name, version, tokenizer=tokenizer, vocab_size=vocab_size,
                                            shard_tokens=shard_tokens, on_operation=_op_bar(bar, task))
    emit(result, as_json, ["name", "tokenizer", "total_tokens", "shard_count", "shard_prefix"])


@datasets_app.command("operation")
def data_operation(name: str, wait: bool = typer.Option(False, "--wait", help="Follow it until done."),
                   as_json: bool = JSON) -> None:
    """Show (or follow) a processing or tokenization operation."""
    c = client()
    emit(c.datasets.wait(name) if wait else c.datasets.operation(name), as_json)
