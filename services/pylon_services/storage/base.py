"""The object-store port: one small synchronous interface over S3 and the local filesystem.

Object storage is the platform's source of truth (datasets, checkpoints, model artifacts,
manifests). Both adapters pass one contract suite (tests/integration/test_storage_contract.py).
Sync on purpose: boto3 is sync, Ray workers are sync, and async callers wrap calls in
``asyncio.to_thread``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from pylon_services.common.errors import Aborted, AlreadyExists, NotFound


class ObjectNotFound(NotFound):
    """No object under that key (or no multipart upload with that id)."""


class ObjectExists(AlreadyExists):
    """A create-only put found the key taken."""


class EtagMismatch(Aborted):
    """A compare-and-swap put found a different etag than expected (or no object)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # opaque; compare only for equality. Quotes stripped.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    next_page_token: str | None  # None when this was the last page


@dataclass(frozen=True)
class CompletedPart:
    part_number: int  # 1-based
    etag: str


class PagedListing:
    """``iter_all`` for any store whose ``list`` pages by token (shared by both adapters)."""

    def list(self, prefix: str, *, page_size: int = 1000, page_token: str | None = None) -> ListPage:
        raise NotImplementedError

    def iter_all(self, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            page = self.list(prefix, page_token=token)
            yield from page.objects
            if page.next_page_token is None:
                return
            token = page.next_page_token


class ObjectStore(Protocol):
    """Keys are '/'-separated paths without a leading '/'; values are bytes."""

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Write ``data``. ``if_none_match``: create-only, raises ObjectExists if the key is taken
        (atomic: of N concurrent create-only puts exactly one wins). ``if_match``: compare-and-swap,
        raises EtagMismatch unless the current etag equals it."""
        ...

    def put_file(self, key: str, path: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Upload a local file, streaming (multipart for large files on S3)."""
        ...

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Whole object, or bytes [start, end) when a range is given. Raises ObjectNotFound."""
        ...

    def iter_chunks(self, key: str, *, chunk_size: int = 1 << 20, offset: int = 0) -> Iterator[bytes]:
        """Stream the object from ``offset`` in chunks, never holding it whole in memory."""
        ...

    def get_file(self, key: str, path: str) -> ObjectInfo:
        """Download to a local file (streamed; written to a temp file and renamed)."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size, etag and metadata. Raises ObjectNotFound."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str, *, page_size: int = 1000, page_token: str | None = None) -> ListPage:
        """Objects whose key starts with ``prefix``, in key order, one page at a time."""
        ...

    def iter_all(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, following pages."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error (idempotent)."""
        ...

    def copy(self, src: str, dst: str, *, if_none_match: bool = False) -> ObjectInfo:
        """Server-side copy (no bytes through the caller on S3)."""
        ...

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload; returns its upload id."""
        ...

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> CompletedPart: ...

    def list_parts(self, key: str, upload_id: str) -> builtins.list[CompletedPart]:
        """Parts already uploaded (for resuming an interrupted upload)."""
        ...

    def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[CompletedPart]) -> ObjectInfo: ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def presign(self, method: str, key: str, *, expires_s: int = 3600, upload_id: str | None = None,
                part_number: int | None = None) -> str | None:
        """A URL a client can use without credentials ('GET', 'PUT', or 'PUT' of one multipart
        part). None where the backend has no URL form (local filesystem): callers then stream
        through the service instead."""
        ...

    def presign_put(self, key: str, *, expires_s: int = 3600, sha256: str = "") -> tuple[str, dict[str, str]] | None:
        """A create-only whole-object PUT URL and the headers the PUT must carry, signed into it:
        ``If-None-Match: *`` (the URL can create the object, never replace it, so bytes verified
        once cannot be swapped while the URL is still valid), and with ``sha256``
        ("sha256:<hex>") the store's checksum header, so the store itself verifies the bytes
        against that digest as they arrive and refuses any others. None without a URL form."""
        ...

    def stored_sha256(self, key: str) -> str | None:
        """The whole-object sha256 ("sha256:<hex>") the store verified when the object was PUT
        with one (``presign_put(sha256=...)``); None where it kept none."""
        ...
