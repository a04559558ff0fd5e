"""Streaming readers for the ingest formats: JSONL, CSV, Parquet and plain text, each optionally
gzip or zstd compressed.

Every reader yields ``(line, value, error)`` one record at a time, so memory stays bounded by
one record (parquet: one record batch): ``value`` is a dict when the record parsed, else ``None``
and ``error`` is ``(reason_code, detail, raw_bytes)``. Line numbers are 1-based physical lines
(parquet: 1-based rows) so a user can find a rejected record in the file they uploaded.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from pylon_services.common.errors import InvalidArgument
from pylon_services.ingest.domain.chunks import LineRange, Part

FORMATS = ("jsonl", "csv", "parquet", "text")
COMPRESSIONS = ("", "gzip", "zstd")
READ_BUFFER = 1 << 20
_BOM = b"\xef\xbb\xbf"

Error = tuple[str, str, bytes]
# A record or the reason it was rejected, never both (readers yield one of the two shapes).
Item = tuple[int, dict[str, Any], None] | tuple[int, None, Error]

_FORMAT_SUFFIXES = {
    "jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl",
    "csv": "csv", "parquet": "parquet", "pq": "parquet",
    "txt": "text", "text": "text", "md": "text",
}
_COMPRESSION_SUFFIXES = {"gz": "gzip", "gzip": "gzip", "zst": "zstd", "zstd": "zstd"}


def detect_format(filename: str) -> tuple[str, str]:
    """Format and compression from a file name (``a.jsonl.zst`` -> ("jsonl", "zstd")).

    Unknown suffixes fall back to plain text: any UTF-8 file can be read line by line.
    """
    parts = filename.lower().rsplit("/", 1)[-1].split(".")
    compression = ""
    if len(parts) > 1 and parts[-1] in _COMPRESSION_SUFFIXES:
        compression = _COMPRESSION_SUFFIXES[parts.pop()]
    fmt = _FORMAT_SUFFIXES.get(parts[-1], "text") if len(parts) > 1 else "text"
    return fmt, compression


class CountingReader(io.RawIOBase):
    """Raw reader over ``src`` that counts the bytes read (``bytes_in`` of a summary)."""

    def __init__(self, src: BinaryIO | io.RawIOBase) -> None:
        self._src = src
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        data = self._src.read(len(buffer))
        if data is None:
            return None  # a non-blocking raw source has nothing yet: say so, as it did
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


def open_decompressed(raw: io.RawIOBase, compression: str) -> io.BufferedIOBase:
    """A buffered, decompressing reader over ``raw``; nothing is read ahead beyond one buffer."""
    if compression not in COMPRESSIONS:
        raise InvalidArgument.field("compression", f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
    buffered = io.BufferedReader(raw, buffer_size=READ_BUFFER)
    if compression == "gzip":
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"), buffer_size=READ_BUFFER)
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=READ_BUFFER)
    return buffered


def iter_lines(f: io.BufferedIOBase, limit: int, bom: bool = True) -> Iterator[tuple[int, bytes | None]]:
    """Physical lines without their line break; ``None`` for a line longer than ``limit`` bytes
    (skipped without holding it in memory). ``bom``: strip a byte order mark from the first line
    (False for chunks that start inside a file)."""
    readline = f.readline
    lineno = 0
    while True:
        line = readline(limit)
        if not line:
            return
        lineno += 1
        if lineno == 1 and bom and line.startswith(_BOM):  # files saved by Windows tools often start with one
            line = line[len(_BOM):]
        if line[-1:] != b"\n" and len(line) >= limit:
            while True:  # discard the rest of the overlong line
                rest = readline(limit)
                if not rest or rest[-1:] == b"\n":
                    break
            yield lineno, None
            continue
        yield lineno, line.rstrip(b"\r\n")


def _too_long(limit: int) -> Error:
    return ("too_long", f"record longer than {limit} bytes", b"")


def iter_jsonl(f: io.BufferedIOBase, limit: int, bom: bool = True) -> Iterator[Item]:
    """JSON objects, one per line; blank lines are skipped."""
    loads = orjson.loads
    for lineno, line in iter_lines(f, limit, bom):
        if line is None:
            yield lineno, None, _too_long(limit)
            continue
        try:
            value = loads(line)
        except orjson.JSONDecodeError as exc:
            if not line.strip():
                continue
            value, error = _parse_json_slow(line, exc)
            if error is not None:
                yield lineno, None, error
                continue
        if type(value) is not dict:
            yield lineno, None, ("not_object", f"expected a JSON object, got {type(value).__name__}", line)
            continue
        yield lineno, value, None


def _parse_json_slow(line: bytes, exc: Exception) -> tuple[Any, Error | None]:
    """Classify a line orjson refused: bad UTF-8, or JSON only the stdlib reads (big ints)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, ("bad_utf8", str(err), line)
    try:
        return json.loads(text), None
    except ValueError:
        return None, ("malformed_json", str(exc), line)


def iter_text(f: io.BufferedIOBase, limit: int, paragraphs: bool = False, bom: bool = True) -> Iterator[Item]:
    """Plain text: one record per non-blank line, or per blank-line-separated paragraph."""
    if paragraphs:
        yield from _iter_paragraphs(f, limit)
        return
    for lineno, line in iter_lines(f, limit, bom):
        if line is None:
            yield lineno, None, _too_long(limit)
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield lineno, None, ("bad_utf8", str(err), line)
            continue
        if text.strip():
            yield lineno, {"text": text}, None


def _iter_paragraphs(f: io.BufferedIOBase, limit: int) -> Iterator[Item]:
    start, size, overlong = 0, 0, False
    parts: list[bytes] = []
    for lineno, line in iter_lines(f, limit):
        if line is not None and not line.strip():
            if parts or overlong:
                yield _paragraph(start, parts, overlong, limit)
            start, size, overlong, parts = 0, 0, False, []
            continue
        start = start or lineno
        if line is None or size + len(line) > limit:
            overlong, parts = True, []  # keep reading to the paragraph's end, holding nothing
            continue
        if not overlong:
            parts.append(line)
            size += len(line) + 1
    if parts or overlong:
        yield _paragraph(start, parts, overlong, limit)


def _paragraph(start: int, parts: list[bytes], overlong: bool, limit: int) -> Item:
    if overlong:
        return start, None, _too_long(limit)
    raw = b"\n".join(parts)
    try:
        return start, {"text": raw.decode("utf-8")}, None
    except UnicodeDecodeError as err:
        return start, None, ("bad_utf8", str(err), raw)


def iter_csv(f: io.BufferedIOBase, limit: int, part: Part | None = None) -> Iterator[Item]:
    """CSV with a header row; rows become dicts of strings (the validator coerces types). A
    ``part`` after the first carries the header; ``part.multiline`` is set when a row spans lines."""
    pending: list[Item] = []
    position = [0]

    def decoded() -> Iterator[str]:
        decode = codecs.getdecoder("utf-8")
        for lineno, line in iter_lines(f, limit, part is None or part.start == 0):
            position[0] = lineno
            if line is None:
                pending.append((lineno, None, _too_long(limit)))
                continue
            try:
                yield decode(line)[0] + "\n"
            except UnicodeDecodeError as err:
                pending.append((lineno, None, ("bad_utf8", str(err), line)))

    csv.field_size_limit(max(limit, csv.field_size_limit()))
    reader = csv.reader(decoded())
    header: list[str] | None = part.header if part is not None else None
    for row in reader:
        yield from pending
        pending.clear()
        # the row ended on the last line read; quoted newlines inside it tell where it began
        spanned = sum(cell.count("\n") for cell in row)
        line = position[0] - spanned
        if spanned and part is not None:
            part.multiline = True
        if not row:
            continue
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            raw = ",".join(row).encode()
            yield line, None, ("csv_columns", f"expected {len(header)} columns, got {len(row)}", raw)
            continue
        yield line, dict(zip(header, row, strict=True)), None
    yield from pending


def iter_parquet(src: BinaryIO, batch_rows: int = 1024, part: Part | None = None) -> Iterator[Item]:
    """Parquet rows, read one record batch at a time (never the whole file); a ``part`` reads
    only its row groups, numbered from its first row."""
    import pyarrow.parquet as pq

    row = part.first_row if part is not None else 0
    groups = part.row_groups if part is not None else None
    with pq.ParquetFile(src) as pf:
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups):
            for value in batch.to_pylist():
                row += 1
                yield row, value, None


def seekable_copy(f: io.BufferedIOBase) -> BinaryIO:
    """Parquet needs random access (its footer is at the end): spool a non-seekable stream to a
    temporary file on disk, never to memory."""
    tmp = tempfile.TemporaryFile(prefix="pylon-parquet-")
    shutil.copyfileobj(f, tmp, READ_BUFFER)
    tmp.seek(0)
    return tmp


def iter_records(src: BinaryIO, fmt: str, compression: str, *, limit: int, paragraphs: bool = False,
                 part: Part | None = None) -> tuple[Iterator[Item], CountingReader]:
    """Records of ``src`` (of one ``part`` of it, see ``chunks``) and the counter of
    compressed bytes read from it."""
    if fmt not in FORMATS:
        raise InvalidArgument.field("format", f"unknown format {fmt!r}; expected one of {FORMATS}")
    # Text formats read only the lines of their part; parquet finds its row groups itself.
    raw: BinaryIO | LineRange = LineRange(src, part) if part is not None and fmt != "parquet" else src
    counter = CountingReader(raw)
    f = open_decompressed(counter, compression)
    bom = part is None or part.start == 0
    if fmt == "jsonl":
        return iter_jsonl(f, limit, bom), counter
    if fmt == "csv":
        return iter_csv(f, limit, part), counter
    if fmt == "text":
        return iter_text(f, limit, paragraphs, bom), counter
    seekable = compression == "" and _is_seekable(src)
    return _parquet_items(src if seekable else None, f, counter, part), counter


def _parquet_items(src: BinaryIO | None, f: io.BufferedIOBase, counter: CountingReader,
                   part: Part | None) -> Iterator[Item]:
    if src is not None:
        start = src.tell()
        end = src.seek(0, io.SEEK_END)
        src.seek(start)
        if part is None or part.index == 0:
            counter.count += end - start  # pyarrow reads src directly; count the whole file once
        yield from iter_parquet(src, part=part)
        return
    with seekable_copy(f) as tmp:
        yield from iter_parquet(tmp, part=part)


def csv_header(src: BinaryIO, compression: str, limit: int) -> list[str] | None:
    """The header row of a CSV stream (the chunks after the first need it)."""
    f = open_decompressed(CountingReader(src), compression)
    csv.field_size_limit(max(limit, csv.field_size_limit()))
    lines = (line.decode("utf-8", errors="replace") + "\n" for _, line in iter_lines(f, limit) if line is not None)
    for row in csv.reader(lines):
        if row:
            return row
    return None


def _is_seekable(src: BinaryIO) -> bool:
    try:
        return bool(src.seekable())
    except (AttributeError, OSError, ValueError):
        return False
