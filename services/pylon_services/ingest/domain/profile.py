"""Dataset profile: record counts, nulls per column, a text-length histogram and a token
estimate. Every figure is a sum or a fixed-bucket histogram so profiles of files processed in
parallel merge exactly (``merge_profiles``)."""

from __future__ import annotations

from typing import Any

HIST_BUCKETS = 32  # bucket k counts texts with 2**(k-1) <= chars < 2**k; bucket 0: empty texts
MAX_COLUMNS = 256  # a profile never grows without bound on records with ever-new keys
TOKEN_BATCH = 512


def bucket_bounds() -> list[tuple[int, int]]:
    """[low, high) character bounds of each histogram bucket (fixed: partial profiles merge)."""
    return [(0, 1)] + [(1 << (k - 1), 1 << k) for k in range(1, HIST_BUCKETS)]


class Profiler:
    """Accumulates the profile of accepted records. ``tokenizer`` (a ``tokenizers.Tokenizer``)
    counts exact tokens in batches; without it tokens are estimated as chars / 4."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.records = 0
        self.chars = 0
        self.min_chars: int | None = None
        self.max_chars = 0
        self.hist = [0] * HIST_BUCKETS
        self.non_null: dict[str, int] = {}
        self.other_columns = 0
        self.tokenizer = tokenizer
        self.tokens = 0
        self._pending: list[str] = []

    def add(self, text: str, record: dict[str, Any]) -> None:
        """Count one accepted record (``record`` holds its other columns)."""
        n = len(text)
        self.records += 1
        self.chars += n
        self.hist[min(n.bit_length(), HIST_BUCKETS - 1)] += 1
        if n > self.max_chars:
            self.max_chars = n
        if self.min_chars is None or n < self.min_chars:
            self.min_chars = n
        non_null = self.non_null
        for key, value in record.items():
            if key in non_null:
                if value is not None:
                    non_null[key] += 1
            elif len(non_null) < MAX_COLUMNS:
                non_null[key] = 0 if value is None else 1
            else:
                self.other_columns += 1
        if self.tokenizer is not None:
            self._pending.append(text)
            if len(self._pending) >= TOKEN_BATCH:
                self._count_tokens()

    def _count_tokens(self) -> None:
        if self._pending:
            encs = self.tokenizer.encode_batch(self._pending, add_special_tokens=False)
            self.tokens += sum(len(e) for e in encs)
            self._pending = []

    def to_dict(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The profile as stored in the manifest."""
        self._count_tokens()
        columns = {k: {"non_null": v, "nulls": self.records - v} for k, v in sorted(self.non_null.items())}
        out = {
            "records": self.records,
            "chars": self.chars,
            "min_chars": self.min_chars or 0,
            "max_chars": self.max_chars,
            "mean_chars": round(self.chars / self.records, 2) if self.records else 0.0,
            "length_histogram": {"scale": "log2", "counts": list(self.hist)},
            "columns": columns,
            "other_columns": self.other_columns,
            "tokens": self.tokens if self.tokenizer is not None else self.chars // 4,
            "tokens_estimated": self.tokenizer is None,
        }
        out.update(extra or {})
        return out


def merge_profiles(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One profile from several (files processed in parallel); sums and bucket-wise adds."""
    parts = [p for p in parts if p]
    if not parts:
        return Profiler().to_dict()
    records = sum(p.get("records", 0) for p in parts)
    chars = sum(p.get("chars", 0) for p in parts)
    hist = [0] * HIST_BUCKETS
    columns: dict[str, int] = {}
    for p in parts:
        for i, c in enumerate(p.get("length_histogram", {}).get("counts", [])):
            hist[i] += c
        for name, col in p.get("columns", {}).items():
            columns[name] = columns.get(name, 0) + col["non_null"]
    mins = [p["min_chars"] for p in parts if p.get("records")]
    out: dict[str, Any] = {
        "records": records,
        "chars": chars,
        "min_chars": min(mins) if mins else 0,
        "max_chars": max(p.get("max_chars", 0) for p in parts),
        "mean_chars": round(chars / records, 2) if records else 0.0,
        "length_histogram": {"scale": "log2", "counts": hist},
        "columns": {k: {"non_null": v, "nulls": records - v} for k, v in sorted(columns.items())},
        "other_columns": sum(p.get("other_columns", 0) for p in parts),
        "tokens_estimated": any(p.get("tokens_estimated", True) for p in parts),
    }
    # Estimates are chars / 4 of the whole, not a sum of rounded-down parts (so a file processed
    # as several chunks reports what it reports as one).
    estimated = all(p.get("tokens_estimated", True) for p in parts)
    out["tokens"] = chars // 4 if estimated else sum(p.get("tokens", 0) for p in parts)
    for key in ("changes", "rejected_by_reason"):
        summed: dict[str, int] = {}
        for p in parts:
            for k, v in p.get(key, {}).items():
                summed[k] = summed.get(k, 0) + v
        out[key] = summed
    return out
