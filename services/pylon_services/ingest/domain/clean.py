"""Cleaning steps for one text: unicode and whitespace normalisation, e-mail / phone scrubbing,
length filters and exact-duplicate removal, each counted so the manifest says what changed."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

EMAIL_TOKEN = "[EMAIL]"
PHONE_TOKEN = "[PHONE]"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# International or national numbers: optional +country code, groups split by space, dot, dash
# or parentheses, 7 to 15 digits in all (E.164). Dates and plain long numbers are not matched
# because a separator between groups is required.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?|\d{1,4}[\s.-])(?:\d{2,4}[\s.-]){1,3}\d{2,4}(?!\w)")
_NOT_PHONE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{1,3}(?:\.\d{1,3}){3}")  # dates, IPv4
# Every character str.isspace() accepts, except the newline (kept as structure) and space.
_ASCII_SPACES = tuple(c for c in map(chr, range(0x80)) if c.isspace() and c not in " \n")
_UNICODE_SPACES = tuple(c for c in map(chr, range(0x80, 0x10000)) if c.isspace())


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace inside a line (any unicode space) become one space; at most one blank
    line in a row; no leading or trailing whitespace. Line structure is kept: it matters for
    code and verse.

    Built from ``in`` / ``str.replace`` passes (C, memchr-fast) instead of a regex or
    split/join: this runs on every record and a regex over the text was 75% of the pipeline.
    """
    for ch in _ASCII_SPACES:
        if ch in text:
            text = text.replace(ch, " ")
    if not text.isascii():
        for ch in _UNICODE_SPACES:
            if ch in text:
                text = text.replace(ch, " ")
    while "  " in text:
        text = text.replace("  ", " ")
    if "\n" in text:
        text = text.replace(" \n", "\n").replace("\n ", "\n")
        while "\n\n\n" in text:
            text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def scrub_phones(text: str) -> tuple[str, int]:
    """Replace phone numbers (7-15 digits) with a token; returns the text and the count."""
    count = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal count
        digits = sum(c.isdigit() for c in m.group())
        if 7 <= digits <= 15 and not _NOT_PHONE.fullmatch(m.group()):
            count += 1
            return PHONE_TOKEN
        return m.group()

    return _PHONE.sub(repl, text), count


def text_digest(text: str) -> bytes:
    """The 16-byte dedupe key of a cleaned text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class DedupeSet:
    """Exact-duplicate filter for the files of one version: keeps 16-byte blake2b digests of the
    cleaned texts only (about 80-100 bytes per record in a Python set), never the texts."""

    def __init__(self, ordered: bool = False) -> None:
        self._seen: set[bytes] = set()
        # ordered: also the digests of the kept texts in the order they were kept (16 B each),
        # i.e. of the records of the output, so a later pass can drop records by position.
        self._order: bytearray | None = bytearray() if ordered else None

    def add(self, text: str) -> bool:
        """Record ``text``; False when it was seen before (a duplicate)."""
        digest = text_digest(text)
        if digest in self._seen:
            return False
        self._seen.add(digest)
        if self._order is not None:
            self._order += digest
        return True

    def ordered_bytes(self) -> bytes:
        """The kept digests in the order kept (``from_bytes`` reads them back as a set)."""
        return bytes(self._order if self._order is not None else self.to_bytes())

    def positions(self, ordered: bytes) -> set[int]:
        """0-based positions in ``ordered`` (an ``ordered_bytes``) of the digests in this set."""
        seen = self._seen
        return {i // 16 for i in range(0, len(ordered), 16) if ordered[i:i + 16] in seen}

    def update(self, other: DedupeSet) -> None:
        """Merge the digests of another set (files deduped separately, then combined)."""
        self._seen |= other._seen

    def to_bytes(self) -> bytes:
        """Concatenated digests, to hand the set to another process or persist it."""
        return b"".join(sorted(self._seen))

    @classmethod
    def from_bytes(cls, data: bytes) -> DedupeSet:
        out = cls()
        out._seen = {data[i:i + 16] for i in range(0, len(data), 16)}
        return out

    def overlap(self, earlier: DedupeSet) -> DedupeSet:
        """Digests of this set already in ``earlier``: the records to drop from this file when
        files were deduped separately (in parallel) and are then combined in order."""
        out = DedupeSet()
        out._seen = self._seen & earlier._seen
        return out

    def has_digest(self, digest: bytes) -> bool:
        return digest in self._seen

    def __contains__(self, text: str) -> bool:
        return text_digest(text) in self._seen

    def __len__(self) -> int:
        return len(self._seen)


class Cleaner:
    """Applies a recipe to texts; ``clean`` returns the cleaned text or a drop reason."""

    def __init__(self, recipe: Any, seen: DedupeSet | None) -> None:
        self.recipe = recipe
        self.form: Any = recipe.normalize_unicode or ""  # one of NFC/NFD/NFKC/NFKD, checked below
        if self.form and self.form not in ("NFC", "NFD", "NFKC", "NFKD"):
            raise ValueError(f"normalize_unicode must be NFC, NFD, NFKC, NFKD or empty, not {self.form!r}")
        self.seen = seen if seen is not None else (DedupeSet() if recipe.dedupe else None)
        self.changes = {"unicode_normalized": 0, "whitespace_normalized": 0, "emails_scrubbed": 0, "phones_scrubbed": 0}

    def clean(self, text: str) -> tuple[str | None, str]:
        """(cleaned text, "") when kept, (None, reason) when dropped."""
        r, changes = self.recipe, self.changes
        if self.form and not unicodedata.is_normalized(self.form, text):
            text = unicodedata.normalize(self.form, text)
            changes["unicode_normalized"] += 1
        if r.scrub_email and "@" in text:
            text, n = _EMAIL.subn(EMAIL_TOKEN, text)
            changes["emails_scrubbed"] += n
        if r.scrub_phone:
            text, n = scrub_phones(text)
            changes["phones_scrubbed"] += n
        if r.normalize_whitespace:
            cleaned = normalize_whitespace(text)
            if cleaned != text:
                changes["whitespace_normalized"] += 1
                text = cleaned
        n = len(text)
        if n < r.min_chars:
            return None, "too_short"
        if n > r.max_chars:
            return None, "too_long"
        if r.dedupe and self.seen is not None and not self.seen.add(text):
            return None, "duplicate"
        return text, ""
