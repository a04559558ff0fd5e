"""The ingest data plane: one streaming pass that reads, validates, cleans and profiles a file.

This module is the contract the ingest service calls inside Ray tasks. It is pure (no grpc,
redis, boto3 or ray) and streams: memory stays bounded whatever the input size, because records
are read one at a time (parquet: one record batch at a time) and dedupe keeps 16-byte digests.
The pieces live in sibling modules (``formats``, ``validate``, ``clean``, ``profile``,
``tokenize``); this module wires them together and re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, BinaryIO

__all__ = [
    "DedupeSet",
    "Recipe",
    "Summary",
    "check_reject_rate",
    "detect_format",
    "infer_schema",
    "merge_summaries",
    "preview",
    "process_stream",
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


class DedupeSet:
    """Exact-duplicate filter shared by the files of one version: 16-byte blake2b digests."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def add(self, text: str) -> bool:
        """Record ``text``; False when it was already seen."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._seen)


def detect_format(filename: str) -> tuple[str, str]:
    """("jsonl"|"csv"|"parquet"|"text", ""|"gzip"|"zstd") from the file name's suffixes."""
    raise NotImplementedError


def infer_schema(src: BinaryIO, fmt: str, compression: str, sample: int = 1000) -> dict:
    """Infer {"fields": {name: {"type": ..., "required": bool}}} from the first ``sample`` records."""
    raise NotImplementedError


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
) -> Summary:
    """Validate, clean and profile one stream; accepted records go to ``out`` as JSONL, bad ones
    to ``rejects`` as {"line", "reason", "raw"}; ``progress(bytes_read)`` is called as it goes."""
    raise NotImplementedError


def merge_summaries(parts: list[Summary]) -> Summary:
    """Combine the summaries of files processed in parallel into one."""
    raise NotImplementedError


def check_reject_rate(summary: Summary, max_reject_rate: float) -> str | None:
    """A message when rejected / records_in exceeds ``max_reject_rate``; None when within it."""
    raise NotImplementedError


def preview(src: BinaryIO, *, fmt: str, compression: str, recipe: Recipe, n: int = 20) -> dict:
    """First ``n`` cleaned records and the profile of what was read to get them."""
    raise NotImplementedError


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Any:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts``."""
    raise NotImplementedError


def write_token_shards(
    texts: Iterable[str],
    tokenizer: Any,
    sink: Callable[[int, bytes], None],
    *,
    shard_tokens: int = 1 << 20,
    dtype: str = "uint16",
    batch: int = 1024,
) -> dict:
    """Encode ``texts`` into fixed-size shards of token ids (EOS between documents)."""
    raise NotImplementedError
