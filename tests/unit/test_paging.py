"""``pylon.paging.Paged``: the SDK's lazy iterator over paged List RPCs."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pylon.paging import Paged


class Server:
    """A List RPC over ``items``: token = offset as text, like the platform's own tokens."""

    def __init__(self, items: list[int], cap: int = 1000) -> None:
        self.items = items
        self.cap = cap
        self.calls: list[tuple[str, int]] = []

    def page(self, token: str, size: int) -> tuple[Sequence[int], str]:
        self.calls.append((token, size))
        start = int(token or 0)
        end = start + min(size, self.cap)
        return self.items[start:end], str(end) if end < len(self.items) else ""


def test_follows_tokens_to_the_end_and_fetches_only_when_reached():
    server = Server(list(range(25)))
    it = Paged(server.page, page_size=10)
    assert server.calls == []  # nothing fetched before iteration
    assert next(it) == 0 and server.calls == [("", 10)]
    assert list(it) == list(range(1, 25))
    assert server.calls == [("", 10), ("10", 10), ("20", 10)]
    assert it.next_page_token == "" and list(it) == []


def test_limit_stops_early_and_resumes_exactly():
    server = Server(list(range(25)))
    first = Paged(server.page, page_size=10, limit=13)
    assert list(first) == list(range(13))
    assert server.calls == [("", 10), ("10", 3)]  # never asks for more than the limit needs
    rest = Paged(server.page, page_size=10, page_token=first.next_page_token)
    assert list(rest) == list(range(13, 25))
    assert list(Paged(server.page, page_size=10, limit=0)) == []


def test_short_and_empty_pages_with_a_token_are_followed():
    pages = {"": ([1], "a"), "a": ([], "b"), "b": ([2, 3], "")}
    assert list(Paged(lambda token, size: pages[token], page_size=5)) == [1, 2, 3]
    capped = Server(list(range(7)), cap=2)  # a server that returns less than asked
    assert list(Paged(capped.page, page_size=5)) == list(range(7))


def test_bad_arguments():
    with pytest.raises(ValueError):
        Paged(Server([]).page, page_size=0)
    with pytest.raises(ValueError):
        Paged(Server([]).page, page_size=1, limit=-1)
