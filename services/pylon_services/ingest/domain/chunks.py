"""Chunks of one file, processed by separate tasks and merged back into one result.

A file is split only where a reader can start without having seen what came before:

- uncompressed JSONL, CSV and line-per-record text: byte ranges cut at line boundaries. A chunk
  owns the records that START in its range ``[start, end)``: it skips the partial line it lands
  in (owned by the previous chunk) and reads past ``end`` to finish its last line. Its line
  numbers are relative; it counts the physical lines it owns so the merge can add the lines of
  the chunks before it. CSV chunks after the first get the header row from the planner. A CSV
  record may contain a quoted newline; a chunk that meets one says so (``Part.multiline``) and
  the runner processes that file again as one chunk, because a cut inside such a record would
  split it (see ``docs/design/ingest.md``);
- Parquet: groups of row groups, each with the absolute number of its first row;
- gzip/zstd streams and paragraph-mode text: never split (a compressed stream cannot be entered
  in the middle; a paragraph can span any number of lines), one chunk.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, BinaryIO

SCAN_BLOCK = 64 << 10  # bytes read at a time while looking for the end of a line


@dataclass
class Part:
    """Which part of a file a reader reads, and what the reader learned while reading it.

    ``start``/``end``: a byte range (line-based formats); ``row_groups``/``first_row``: Parquet;
    ``header``: the CSV header for chunks after the first. The reader sets ``lines`` (physical
    lines it owned) and ``multiline`` (a CSV record spanned lines).
    """

    index: int = 0
    start: int = 0
    end: int = -1
    row_groups: list[int] | None = None
    first_row: int = 0
    header: list[str] | None = None
    lines: int = 0
    multiline: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "end": self.end, "row_groups": self.row_groups,
                "first_row": self.first_row, "header": self.header}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Part:
        return cls(index=d.get("index", 0), start=d.get("start", 0), end=d.get("end", -1),
                   row_groups=d.get("row_groups"), first_row=d.get("first_row", 0), header=d.get("header"))


def splittable(fmt: str, compression: str, paragraphs: bool) -> bool:
    """Whether a file of this kind can be cut into chunks at all (see the module docstring)."""
    if compression:
        return False
    return fmt in ("jsonl", "csv", "parquet") or (fmt == "text" and not paragraphs)


def byte_ranges(size: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """Nominal ``[start, end)`` ranges of about ``chunk_bytes`` covering ``size`` bytes."""
    if size <= chunk_bytes or chunk_bytes <= 0:
        return [(0, size)]
    n = -(-size // chunk_bytes)
    step = -(-size // n)  # equal sizes, so the last chunk is not a sliver
    return [(s, min(s + step, size)) for s in range(0, size, step)]


def row_group_chunks(sizes: list[int], rows: list[int], chunk_bytes: int) -> list[tuple[list[int], int]]:
    """Consecutive row groups packed into chunks of about ``chunk_bytes`` (compressed size);
    each with the 0-based number of its first row."""
    out: list[tuple[list[int], int]] = []
    group: list[int] = []
    acc = first = row = 0
    for i, (size, n) in enumerate(zip(sizes, rows, strict=True)):
        if group and acc + size > chunk_bytes:
            out.append((group, first))
            group, acc, first = [], 0, row
        group.append(i)
        acc += size
        row += n
    if group or not out:
        out.append((group, first))
    return out


class LineRange(io.RawIOBase):
    """The bytes of the lines that start in ``[start, end)`` of a seekable stream.

    Memory: one ``SCAN_BLOCK`` at most beyond what the caller asks for. Counts the physical
    lines it hands out in ``part.lines`` (newlines, plus a final unterminated line).
    """

    def __init__(self, src: BinaryIO, part: Part) -> None:
        self._src, self._part = src, part
        self._end = part.end
        self._pos = self._skip_to_line_start(part.start)
        self._done = self._pos < 0
        self._last = b"\n"  # last byte handed out

    def _skip_to_line_start(self, start: int) -> int:
        """Position of the first line starting at or after ``start`` (-1: none)."""
        if start == 0:
            self._src.seek(0)
            return 0
        self._src.seek(start - 1)
        pos = start - 1
        while True:
            block = self._src.read(SCAN_BLOCK)
            if not block:
                return -1
            i = block.find(b"\n")
            if i >= 0:
                pos += i + 1
                self._src.seek(pos)
                return pos
            pos += len(block)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        want = len(b)
        if self._pos < self._end:
            data = self._src.read(min(want, self._end - self._pos))
        elif self._last == b"\n":  # the line that crossed ``end`` is finished
            data = b""
        else:
            data = self._src.read(min(want, SCAN_BLOCK))
            i = data.find(b"\n")
            if i >= 0:
                data = data[: i + 1]
                self._src.seek(self._pos + len(data))
        if not data:
            self._finish()
            return 0
        n = len(data)
        b[:n] = data
        self._pos += n
        self._last = data[-1:]
        self._part.lines += data.count(b"\n")
        return n

    def _finish(self) -> None:
        if not self._done and self._last != b"\n":
            self._part.lines += 1  # a last line without a line break
        self._done = True
