"""File-like streams over the object store, so the data plane reads and writes objects with
bounded memory: ``ObjectReader`` (sequential chunks, seekable through ranged reads, hashing what
it reads in order) and ``ObjectWriter`` (buffers one part at a time into a multipart upload)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any

from pylon_services.storage.base import CompletedPart, ObjectStore

READ_CHUNK = 4 << 20
WRITE_PART = 8 << 20


class ObjectReader(io.RawIOBase):
    """Reads ``key`` from the store in chunks. Bytes read strictly in order from offset 0 feed a
    sha256; ``finish_hash`` completes it (reading only what was skipped, if anything)."""

    def __init__(self, store: ObjectStore, key: str, size: int, progress: Callable[[int], None] | None = None) -> None:
        self._store, self._key, self._size = store, key, size
        self._pos = 0
        self._chunks: Iterator[bytes] | None = None
        self._buf = b""
        self._sha = hashlib.sha256()
        self._hashed = 0
        self._progress = progress

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        new = max(0, base + offset)
        if new != self._pos:
            self._pos, self._chunks, self._buf = new, None, b""
        return self._pos

    def readinto(self, b: Any) -> int:
        if self._pos >= self._size:
            return 0
        if not self._buf:
            if self._chunks is None:
                self._chunks = self._store.iter_chunks(self._key, chunk_size=READ_CHUNK, offset=self._pos)
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        data, self._buf = self._buf[:n], self._buf[n:]
        b[:n] = data
        if self._pos == self._hashed:
            self._sha.update(data)
            self._hashed += n
        self._pos += n
        if self._progress:
            self._progress(self._pos)
        return n

    def finish_hash(self) -> tuple[str, int]:
        """(``sha256:<hex>``, bytes hashed) of the whole object."""
        if self._hashed < self._size:
            for chunk in self._store.iter_chunks(self._key, chunk_size=READ_CHUNK, offset=self._hashed):
                self._sha.update(chunk)
                self._hashed += len(chunk)
        return f"sha256:{self._sha.hexdigest()}", self._hashed


class ObjectWriter(io.RawIOBase):
    """Writes ``key`` as a multipart upload, one ``WRITE_PART`` buffer at a time, hashing as it
    goes. Small outputs become one plain put. ``close`` publishes; ``abort`` discards."""

    def __init__(self, store: ObjectStore, key: str, part_size: int = WRITE_PART) -> None:
        self._store, self.key, self._part_size = store, key, part_size
        self._buf = bytearray()
        self._parts: list[CompletedPart] = []
        self._upload_id = ""
        self._sha = hashlib.sha256()
        self.size = 0
        self.digest = ""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._buf += data
        self._sha.update(data)
        self.size += len(data)
        if len(self._buf) >= self._part_size:
            self._flush_part()
        return len(data)

    def _flush_part(self) -> None:
        if not self._upload_id:
            self._upload_id = self._store.create_multipart(self.key)
        part = bytes(self._buf[: self._part_size])
        del self._buf[: self._part_size]
        self._parts.append(self._store.upload_part(self.key, self._upload_id, len(self._parts) + 1, part))

    def close(self) -> None:
        if self.closed:
            return
        if self._upload_id:
            while self._buf:
                self._flush_part()
            self._store.complete_multipart(self.key, self._upload_id, self._parts)
        else:
            self._store.put(self.key, bytes(self._buf))
        self._buf = bytearray()
        self.digest = f"sha256:{self._sha.hexdigest()}"
        super().close()

    def abort(self) -> None:
        if self._upload_id:
            self._store.abort_multipart(self.key, self._upload_id)
        self._buf = bytearray()
        super().close()

    def result(self) -> dict[str, Any]:
        return {"key": self.key, "digest": self.digest, "size": self.size}
