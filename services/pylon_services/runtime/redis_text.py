"""Text from a Redis client's replies.

The platform's clients keep ``decode_responses`` off (values may be binary), so replies are
bytes; redis-py's types say ``bytes | str`` because they cover both settings. ``as_text`` is
right for either.
"""

from __future__ import annotations


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
