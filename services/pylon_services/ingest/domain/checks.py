"""What ingest accepts in a request, checked before any work or storage is spent on it.

One set of checks for every upload path (a presigned session, a gRPC stream, an import), so a
file name or an option one path refuses is refused by all: file names follow the platform's
path rule (``common.paths.check_path``, one name, no '/'), descriptions are up to 2048
characters, request ids up to 128, a schema is at most 64 KiB of JSON, the recipe's numbers are
bounded (``MAX_RECORD_CHARS``: the line length a task reads is four times ``max_chars``, so an
unbounded ``max_chars`` would let one request make a task hold gigabytes), and an import names
at most ``MAX_SOURCES`` objects inside the caller's own area.
"""

from __future__ import annotations

from typing import Any

from pylon_services.common.errors import InvalidArgument
from pylon_services.common.limits import (
    MAX_SHORT_TEXT,
    MAX_URI,
    check_description,
    check_int,
    check_json,
    check_number,
    check_request_id,
    check_text,
)
from pylon_services.common.paths import check_path

DEFAULT_MAX_REJECT_RATE = 0.1
FORMATS = ("text", "jsonl", "csv", "parquet")
COMPRESSIONS = ("", "gzip", "zstd")
UNICODE_FORMS = ("", "NFC", "NFKC", "NFD", "NFKD")
MAX_RECORD_CHARS = 16 << 20  # the largest max_chars a recipe may ask for
MAX_SOURCES = 1000  # objects one import may name
MAX_VERSION = 9_999_999_999
VERSION_AHEAD = 1000  # how far above the latest version an explicit version number may be
_RECIPE_DEFAULTS = {"text_field": "text", "normalize_unicode": "NFC", "normalize_whitespace": True, "min_chars": 1,
                    "max_chars": 1_000_000, "dedupe": True, "scrub_email": False, "scrub_phone": False}


def check_file(field: str, path: str, fmt: str, compression: str) -> None:
    """A file of a dataset version: its name (one path segment), format and compression."""
    check_path(f"{field}.path", path, nested=False)
    if fmt not in FORMATS:
        raise InvalidArgument.field(f"{field}.format", f"must be one of {', '.join(FORMATS)}")
    if compression not in COMPRESSIONS:
        raise InvalidArgument.field(f"{field}.compression", "must be none, gzip or zstd")


def check_header(field: str, header: dict[str, Any]) -> None:
    """What every upload's header carries besides the dataset (path, format, sizes, texts)."""
    check_file(field, header["path"], header["format"], header["compression"])
    check_description(f"{field}.description", header.get("description", ""))
    check_request_id(f"{field}.request_id", header.get("request_id", ""))
    if header.get("size", 0) < 0:
        raise InvalidArgument.field(f"{field}.size_bytes", "must not be negative")


def processing_options(given: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and validate ``{"schema", "recipe", "max_reject_rate"}``."""
    recipe = {**_RECIPE_DEFAULTS, **{k: v for k, v in (given.get("recipe") or {}).items() if v is not None}}
    if recipe["normalize_unicode"] == "none":
        recipe["normalize_unicode"] = ""
    if recipe["normalize_unicode"] not in UNICODE_FORMS:
        raise InvalidArgument.field("processing.recipe.normalize_unicode", "must be NFC, NFKC, NFD, NFKD or none")
    check_text("processing.recipe.text_field", str(recipe["text_field"]), MAX_SHORT_TEXT)
    check_int("processing.recipe.max_chars", int(recipe["max_chars"]), 1, MAX_RECORD_CHARS)
    if not 0 <= int(recipe["min_chars"]) <= int(recipe["max_chars"]):
        raise InvalidArgument.field("processing.recipe.min_chars", "must be between 0 and max_chars")
    rate = given.get("max_reject_rate")
    rate = DEFAULT_MAX_REJECT_RATE if rate is None else float(rate)
    check_number("processing.max_reject_rate", rate, 0.0, 1.0)
    schema = given.get("schema") or None
    if schema is not None and not isinstance(schema, dict):
        raise InvalidArgument.field("processing.schema", "must be an object")
    if schema is not None:
        check_json("processing.schema", schema)
    return {"schema": schema, "recipe": recipe, "max_reject_rate": rate}


def check_sources(uris: list[str]) -> None:
    """The object URIs an import names: 1 to ``MAX_SOURCES``, each at most ``MAX_URI`` long."""
    if not uris:
        raise InvalidArgument.field("source_uris", "name at least one object")
    if len(uris) > MAX_SOURCES:
        raise InvalidArgument.field("source_uris", f"at most {MAX_SOURCES} objects per import")
    for i, uri in enumerate(uris):
        check_text(f"source_uris[{i}]", uri, MAX_URI)


def check_object_key(field: str, key: str) -> str:
    """An object key a request names: the path rule, so it cannot climb out of its prefix."""
    return check_path(field, key)


def check_version_number(version: int, latest: int) -> int:
    """An explicit version to publish: 0 (the next free one) or a number at most
    ``VERSION_AHEAD`` above the latest, so the numbering stays dense enough to page through."""
    if version == 0:
        return 0
    check_int("version", version, 1, min(MAX_VERSION, latest + VERSION_AHEAD))
    return version
