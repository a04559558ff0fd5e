"""The ingest data plane: one streaming pass that reads, validates, cleans and profiles a file.

This module is the contract the ingest service calls inside Ray tasks. It is pure (no grpc,
redis, boto3 or ray) and streams: memory stays bounded whatever the input size, because records
are read one at a time (parquet: one record batch at a time) and dedupe keeps 16-byte digests.
The pieces live in sibling modules (``formats``, ``validate``, ``clean``, ``profile``,
``tokenize``); this module wires them together and re-exports the public names.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, BinaryIO

import orjson

from pylon_services.common.errors import InvalidArgument
from pylon_services.ingest.domain import formats
from pylon_services.ingest.domain.chunks import Part
from pylon_services.ingest.domain.clean import Cleaner, DedupeSet, text_digest
from pylon_services.ingest.domain.formats import detect_format
from pylon_services.ingest.domain.profile import Profiler, merge_profiles
from pylon_services.ingest.domain.tokenize import (
    find_eos,
    load_tokenizer,
    shard_name,
    train_tokenizer,
    write_token_shards,
)
from pylon_services.ingest.domain.validate import Validator, infer_from_records, merge_schemas, normalize_schema

__all__ = [
    "DedupeSet",
    "Part",
    "Recipe",
    "Summary",
    "check_reject_rate",
    "cross_file_duplicates",
    "detect_format",
    "drop_duplicates",
    "drop_lines",
    "find_eos",
    "load_tokenizer",
    "infer_schema",
    "merge_summaries",
    "preview",
    "process_stream",
    "shard_name",
    "train_tokenizer",
    "write_token_shards",
]


@dataclass(frozen=True)
class Recipe:
    """Cleaning steps applied to every record, recorded in the version manifest."""

    text_field: str = "text"  # for jsonl/csv/parquet: the column holding the text
    normalize_unicode: str = "NFC"  # "" to skip
    normalize_whitespace: bool = True
    min_chars: int = 1
    max_chars: int = 1_000_000
    dedupe: bool = True  # exact duplicate records removed
    scrub_email: bool = False
    scrub_phone: bool = False
    paragraphs: bool = False  # plain text: one record per blank-line-separated paragraph

    def __post_init__(self) -> None:
        """Reject a recipe that cannot run (the RPC layer maps this to INVALID_ARGUMENT)."""
        if self.normalize_unicode not in ("", "NFC", "NFD", "NFKC", "NFKD"):
            raise InvalidArgument.field("recipe.normalize_unicode", "must be NFC, NFD, NFKC, NFKD or empty")
        if self.min_chars < 0 or self.max_chars < max(self.min_chars, 1):
            raise InvalidArgument.field("recipe.max_chars", "need 0 <= min_chars <= max_chars and max_chars >= 1")
        if not self.text_field:
            raise InvalidArgument.field("recipe.text_field", "must name the column holding the text")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Summary:
    """What one processed stream produced (merge several with ``merge_summaries``)."""

    records_in: int = 0
    records_out: int = 0
    rejected: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    schema: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})



RAW_PREVIEW = 1000  # characters of a rejected record kept in the rejects file
FLUSH_BYTES = 1 << 20
PROGRESS_BYTES = 4 << 20


def _line_limit(recipe: Recipe) -> int:
    """Longest physical line read: a record longer than this cannot pass ``max_chars``."""
    return max(recipe.max_chars * 4 + 4096, 1 << 16)


def _text_key(fmt: str, recipe: Recipe) -> str:
    return "text" if fmt == "text" else recipe.text_field


def infer_schema(src: BinaryIO, fmt: str, compression: str, sample: int = 1000,
                 recipe: Recipe | None = None) -> dict:
    """Infer the canonical schema ({"fields": {name: {"type": [...], "required": bool}}}) from
    the first ``sample`` parseable records; reads only as far as it needs."""
    recipe = recipe or Recipe()
    items, _ = formats.iter_records(src, fmt, compression, limit=_line_limit(recipe), paragraphs=recipe.paragraphs)
    values = (v for _, v, _ in itertools.islice(items, sample) if v is not None)
    return infer_from_records(values, coerce=fmt == "csv", text_field=_text_key(fmt, recipe))


class _Run:
    """State of one ``process_stream`` call: counters, output buffers and the cleaning steps."""

    def __init__(self, out: BinaryIO, rejects: BinaryIO, recipe: Recipe, text_key: str,
                 validator: Validator, seen: DedupeSet | None, tokenizer: Any) -> None:
        self.out, self.rejects, self.text_key, self.validator = out, rejects, text_key, validator
        self.cleaner = Cleaner(recipe, seen)
        self.profiler = Profiler(tokenizer)
        self.buf = bytearray()
        self.reject_buf = bytearray()
        self.records_in = self.records_out = self.rejected = self.bytes_out = 0
        self.dropped: dict[str, int] = {}
        self.reasons: dict[str, int] = {}

    def reject(self, line: int, code: str, detail: str, raw: bytes | dict[str, Any]) -> None:
        self.rejected += 1
        self.reasons[code] = self.reasons.get(code, 0) + 1
        if isinstance(raw, dict):
            raw = orjson.dumps(raw, default=str)
        text = raw[: RAW_PREVIEW * 4].decode("utf-8", errors="replace")[:RAW_PREVIEW]
        self.reject_buf += orjson.dumps({"line": line, "reason": f"{code}: {detail}", "raw": text},
                                        option=orjson.OPT_APPEND_NEWLINE)
        if len(self.reject_buf) >= FLUSH_BYTES:
            self.flush()

    def accept(self, line: int, value: dict[str, Any]) -> bool:
        """Validate and clean one parsed record; True when it was written to ``out``."""
        problem = self.validator.check(value)
        if problem is not None:
            self.reject(line, problem[0], problem[1], value)
            return False
        key = self.text_key
        text = value.get(key)
        if type(text) is not str:
            what = "missing or null" if text is None else f"a {type(text).__name__}, not a string"
            self.reject(line, "missing_text" if text is None else "wrong_type", f"text field {key!r} is {what}", value)
            return False
        cleaned, reason = self.cleaner.clean(text)
        if cleaned is None:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            return False
        record = {"text": cleaned}
        if len(value) > 1:
            for k, v in value.items():
                if k != key and k != "text":
                    record[k] = v
        self.profiler.add(cleaned, record)
        try:
            self.buf += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE, default=str)
        except TypeError:  # integers beyond 64 bits: orjson refuses them, the stdlib does not
            self.buf += (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        self.records_out += 1
        if len(self.buf) >= FLUSH_BYTES:
            self.flush()
        return True

    def flush(self) -> None:
        if self.buf:
            self.out.write(bytes(self.buf))
            self.bytes_out += len(self.buf)
            self.buf.clear()
        if self.reject_buf:
            self.rejects.write(bytes(self.reject_buf))
            self.reject_buf.clear()


def process_stream(
    src: BinaryIO,
    out: BinaryIO,
    rejects: BinaryIO,
    *,
    fmt: str,
    compression: str,
    schema: dict | None,
    recipe: Recipe,
    seen: DedupeSet | None = None,
    progress: Callable[[int], None] | None = None,
    tokenizer: Any = None,
    limit: int | None = None,
    sample: int = 1000,
    part: Part | None = None,
) -> Summary:
    """Validate, clean and profile one stream in a single pass with bounded memory.

    Accepted records go to ``out`` as JSONL ``{"text": ..., other columns}``; each bad record
    goes to ``rejects`` as ``{"line", "reason", "raw"}``; records removed by cleaning are counted
    per reason in ``Summary.dropped``. Without ``schema`` one is inferred from the first
    ``sample`` records (held while inferring, then processed like the rest). ``seen`` shares
    dedupe across the files of a version; ``progress(bytes_read)`` is called every few MiB;
    ``tokenizer`` makes the profile count exact tokens; ``limit`` stops after that many
    accepted records (previews); ``part`` reads one chunk of ``src`` (see ``chunks``; its line
    numbers are then relative to the chunk, and it should come with the file's ``schema``).
    """
    items, counter = formats.iter_records(src, fmt, compression, limit=_line_limit(recipe),
                                          paragraphs=recipe.paragraphs, part=part)
    text_key = _text_key(fmt, recipe)
    try:
        if schema is None:
            head = list(itertools.islice(items, sample))
            schema = infer_from_records((v for _, v, _ in head if v is not None), coerce=fmt == "csv", text_field=text_key)
            items = itertools.chain(head, items)
        else:
            schema = normalize_schema(schema)
        run = _Run(out, rejects, recipe, text_key, Validator(schema, coerce=fmt == "csv"), seen, tokenizer)
        _consume(run, items, counter, progress, limit)
    except (OSError, EOFError, ValueError) as exc:  # truncated gzip/zstd, corrupt parquet
        raise InvalidArgument(f"cannot read the input after {counter.count} bytes: {exc}") from exc
    run.flush()
    if progress is not None:
        progress(counter.count)
    profile = run.profiler.to_dict({"changes": dict(run.cleaner.changes), "rejected_by_reason": dict(run.reasons)})
    return Summary(records_in=run.records_in, records_out=run.records_out, rejected=run.rejected,
                   dropped=dict(run.dropped), schema=schema, profile=profile,
                   bytes_in=counter.count, bytes_out=run.bytes_out)


def _consume(run: _Run, items: Iterator[formats.Item], counter: formats.CountingReader,
             progress: Callable[[int], None] | None, limit: int | None) -> None:
    next_report = PROGRESS_BYTES
    for item in items:
        run.records_in += 1
        if item[2] is not None:  # indexed, not unpacked: mypy narrows the record-or-error union
            run.reject(item[0], *item[2])
        elif run.accept(item[0], item[1]) and limit is not None and run.records_out >= limit:
            return
        if progress is not None and counter.count >= next_report:
            progress(counter.count)
            next_report = counter.count + PROGRESS_BYTES


def cross_file_duplicates(sets: list[DedupeSet]) -> list[DedupeSet]:
    """For files deduped separately (one ``DedupeSet`` each, e.g. in parallel Ray tasks), the
    digests each file must still drop because an earlier file (in list order) kept them; files
    whose result is empty need no second pass."""
    earlier = DedupeSet()
    out = []
    for s in sets:
        out.append(s.overlap(earlier))
        earlier.update(s)
    return out


def drop_duplicates(src: BinaryIO, out: BinaryIO, drop: DedupeSet, summary: Summary | None = None) -> int:
    """Copy a ``process_stream`` output (JSONL) without the records whose text is in ``drop``;
    returns how many were removed. With ``summary`` (that file's), its counts and profile are
    corrected in place as if the records had been dropped as duplicates the first time
    (min/max chars and token counts excepted: they stay those of the first pass). Streamed."""
    removed = 0

    def kept() -> Iterator[bytes]:
        nonlocal removed
        for line in src:
            record = orjson.loads(line)
            if drop.has_digest(text_digest(record["text"])):
                removed += 1
                if summary is not None:
                    _unprofile(summary, record)
                continue
            yield line

    _write_buffered(kept(), out)
    return removed


def drop_lines(src: BinaryIO, out: BinaryIO, positions: set[int], summary: Summary) -> None:
    """Copy a ``process_stream`` output without the records at ``positions`` (0-based), found
    from the output's ordered dedupe digests: only the dropped records are parsed (to correct
    ``summary`` as ``drop_duplicates`` does). Streamed."""
    def kept() -> Iterator[bytes]:
        for i, line in enumerate(src):
            if i in positions:
                _unprofile(summary, orjson.loads(line))
                continue
            yield line

    _write_buffered(kept(), out)


def _write_buffered(lines: Iterable[bytes], out: BinaryIO) -> None:
    """Write ``lines`` to ``out`` in blocks of about ``FLUSH_BYTES``."""
    buf = bytearray()
    for line in lines:
        buf += line
        if len(buf) >= FLUSH_BYTES:
            out.write(bytes(buf))
            buf.clear()
    out.write(bytes(buf))


def _unprofile(summary: Summary, record: dict[str, Any]) -> None:
    summary.records_out -= 1
    summary.bytes_out -= len(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE, default=str))
    summary.dropped["duplicate"] = summary.dropped.get("duplicate", 0) + 1
    p, n = summary.profile, len(record["text"])
    if not p:
        return
    p["records"] -= 1
    p["chars"] -= n
    p["mean_chars"] = round(p["chars"] / p["records"], 2) if p["records"] else 0.0
    p["length_histogram"]["counts"][min(n.bit_length(), len(p["length_histogram"]["counts"]) - 1)] -= 1
    for key, col in p.get("columns", {}).items():
        if record.get(key) is not None:
            col["non_null"] -= 1
        else:
            col["nulls"] -= 1
    if p.get("tokens_estimated"):
        p["tokens"] = p["chars"] // 4


def merge_summaries(parts: list[Summary]) -> Summary:
    """Combine the summaries of the files of one version (processed in parallel) into one."""
    dropped: dict[str, int] = {}
    for p in parts:
        for k, v in p.dropped.items():
            dropped[k] = dropped.get(k, 0) + v
    return Summary(
        records_in=sum(p.records_in for p in parts), records_out=sum(p.records_out for p in parts),
        rejected=sum(p.rejected for p in parts), dropped=dropped,
        schema=merge_schemas([p.schema for p in parts]), profile=merge_profiles([p.profile for p in parts]),
        bytes_in=sum(p.bytes_in for p in parts), bytes_out=sum(p.bytes_out for p in parts),
    )


def check_reject_rate(summary: Summary, max_reject_rate: float) -> str | None:
    """A message for the user when more than ``max_reject_rate`` (0..1) of the records read were
    rejected as invalid (cleaning drops do not count); None when within the limit."""
    if summary.records_in == 0 or summary.rejected == 0:
        return None
    rate = summary.rejected / summary.records_in
    if rate <= max_reject_rate:
        return None
    reasons = summary.profile.get("rejected_by_reason", {})
    top = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    return (f"{summary.rejected} of {summary.records_in} records rejected ({rate:.2%}), above the limit of "
            f"{max_reject_rate:.2%}" + (f" ({top})" if top else ""))


def preview(src: BinaryIO, *, fmt: str, compression: str, recipe: Recipe | None = None, n: int = 20,
            schema: dict | None = None) -> dict:
    """The first ``n`` cleaned records and the profile of what was read to get them (the
    dataset page and ``pylon datasets preview``); stops reading once it has them."""
    out, rejects = io.BytesIO(), io.BytesIO()
    summary = process_stream(src, out, rejects, fmt=fmt, compression=compression, schema=schema,
                             recipe=recipe or Recipe(), limit=n, sample=min(n * 10, 1000))
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    bad = [orjson.loads(line) for line in rejects.getvalue().splitlines()]
    return {"records": records, "rejects": bad[:n], "profile": summary.profile, "schema": summary.schema,
            "summary": {k: v for k, v in summary.to_dict().items() if k not in ("profile", "schema")}}
