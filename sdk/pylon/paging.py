"""Lazy iteration over the platform's paged List RPCs."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
# (page_token, page_size) -> (items of that page, next_page_token or "" at the end)
FetchPage = Callable[[str, int], tuple[Sequence[T], str]]


class Paged(Generic[T]):
    """An iterator over every item of a List RPC: pages are fetched only as iteration reaches
    them, following ``next_page_token`` until the server says there is no more, or until
    ``limit`` items were returned. A page never asks for more than ``limit`` still needs, so a
    stopped iteration can be resumed exactly from ``next_page_token``."""

    def __init__(self, fetch: FetchPage[T], *, page_size: int, limit: int | None = None,
                 page_token: str = "") -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        self._fetch = fetch
        self._page_size = page_size
        self._left = limit
        self._buffer: deque[T] = deque()
        self._started = False
        self.next_page_token = page_token
        """Token of the first page not fetched yet ("" once the server has no more)."""

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        while not self._buffer:
            if self._left == 0 or (self._started and not self.next_page_token):
                raise StopIteration
            size = self._page_size if self._left is None else min(self._page_size, self._left)
            items, self.next_page_token = self._fetch(self.next_page_token, size)
            self._started = True
            self._buffer = deque(items)
        if self._left is not None:
            self._left -= 1
        return self._buffer.popleft()
