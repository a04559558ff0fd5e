"""The scheduler's lean RESP codec: commands encode as RESP arrays; replies parse whole, in any
split across reads, with errors as values."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from pylon_services.scheduler.store.resp_pipe import _INCOMPLETE, encode, parse


def test_commands_encode_as_arrays_of_bulk_strings() -> None:
    assert encode((b"EVALSHA", "abc", 2, "k", 1.5, b"\r\n")) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n2\r\n$1\r\nk\r\n$3\r\n1.5\r\n$2\r\n\r\n\r\n")
    assert encode(("é",)) == b"*1\r\n$2\r\n\xc3\xa9\r\n"  # length in bytes, not characters
    with pytest.raises(TypeError):
        encode((None,))


def test_replies_parse_whole_or_not_at_all() -> None:
    stream = (b"+OK\r\n:42\r\n$-1\r\n*2\r\n$7\r\ncreated\r\n$0\r\n\r\n-NOSCRIPT No matching script\r\n"
              b"*2\r\n*1\r\n:1\r\n$3\r\na\r\n\r\n*-1\r\n")
    want = [b"OK", 42, None, [b"created", b""], "NOSCRIPT No matching script", [[1], b"a\r\n"], None]
    got, pos = [], 0
    while pos < len(stream):
        value, pos = parse(bytearray(stream), pos)
        got.append(str(value) if isinstance(value, ResponseError) else value)
    assert got == want
    for cut in range(1, len(stream)):  # every split point: a prefix never yields a wrong value
        head = bytearray(stream[:cut])
        values, pos = [], 0
        while (r := parse(head, pos)) is not _INCOMPLETE:
            value, pos = r
            values.append(str(value) if isinstance(value, ResponseError) else value)
        assert values == want[:len(values)]
