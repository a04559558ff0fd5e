"""Page tokens and page budgets for every List RPC.

A page token is opaque to clients: base64url (no padding) of a small JSON array
``[kind, position, scope]``. ``kind`` says which list issued it (a ListModels token is refused
by ListAliasHistory), ``position`` is where the next page starts (a number or a short string),
``scope`` is a short hash of the query the token belongs to (a filter, an ordering, the parent),
so a token replayed against another query is refused instead of silently skipping.

Tokens are not signed: a client can forge one. That is safe because every list checks the
position against what exists (a number never above the current maximum, a name inside the
parent) and reads at most one page from there, so no token can start unbounded work. Decoding
never raises anything but ``InvalidArgument`` on field ``page_token``.

``PageBudget`` bounds the bytes of one page: a page of 1000 records of a few KiB is well under
the 16 MiB message limit, but records with many files are larger, so a list stops early (with
a next token, as AIP-158 allows) once a page holds ``MAX_PAGE_BYTES``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from pylon_services.common.errors import InvalidArgument

MAX_TOKEN_CHARS = 512
MAX_POSITION_CHARS = 300
MAX_POSITION = (1 << 53) - 1  # JSON numbers stay exact below this
MAX_PAGE_BYTES = 4 << 20  # about: records are weighed as compact JSON, a little above their proto size
_BAD = "is not a page token this server issued for this list"
_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


def _scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:12] if scope else ""


def encode_token(kind: str, position: int | str, scope: str = "") -> str:
    """An opaque token for the page that starts at ``position`` of list ``kind``."""
    raw = json.dumps([kind, position, _scope_hash(scope)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, kind: str, scope: str = "") -> int | str | None:
    """The position a token names (None for an empty token: the first page). Refuses, as
    INVALID_ARGUMENT on ``page_token``, anything ``encode_token(kind, ..., scope)`` did not make;
    the caller still checks the position against what exists."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS or not _ALPHABET.match(token):
        raise InvalidArgument.field("page_token", _BAD)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", _BAD) from None
    if not (isinstance(value, list) and len(value) == 3 and value[0] == kind):
        raise InvalidArgument.field("page_token", _BAD)
    if value[2] != _scope_hash(scope):
        raise InvalidArgument.field("page_token", "belongs to another query: pass the same filter, ordering "
                                                  "and parent as the call that returned it")
    position = value[1]
    if isinstance(position, bool) or not isinstance(position, (int, str)):
        raise InvalidArgument.field("page_token", _BAD)
    if isinstance(position, int) and not 0 <= position <= MAX_POSITION:
        raise InvalidArgument.field("page_token", _BAD)
    if isinstance(position, str) and len(position) > MAX_POSITION_CHARS:
        raise InvalidArgument.field("page_token", _BAD)
    return position


def decode_int_token(token: str, kind: str, scope: str = "", *, hi: int = MAX_POSITION) -> int | None:
    """A numeric position in [0, hi], or None for the first page."""
    position = decode_token(token, kind, scope)
    if position is None:
        return None
    if not isinstance(position, int) or position > hi:
        raise InvalidArgument.field("page_token", _BAD)
    return position


def decode_str_token(token: str, kind: str, scope: str = "") -> str | None:
    """A string position (a name to continue after), or None for the first page."""
    position = decode_token(token, kind, scope)
    if position is None:
        return None
    if not isinstance(position, str):
        raise InvalidArgument.field("page_token", _BAD)
    return position


def weigh(doc: Any) -> int:
    """Bytes a record takes as compact JSON: the measure ``PageBudget`` counts."""
    return len(json.dumps(doc, separators=(",", ":"), default=str))


class PageBudget:
    """Counts the bytes of a page as records are added; the first record always fits (one
    record is bounded by the field limits and the message size), later ones only while the
    page stays under ``max_bytes``."""

    def __init__(self, max_bytes: int = MAX_PAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.count = 0

    def take(self, doc: Any) -> bool:
        """Add ``doc`` if it fits; False means: end the page before it."""
        size = weigh(doc)
        if self.count and self.used + size > self.max_bytes:
            return False
        self.used += size
        self.count += 1
        return True
