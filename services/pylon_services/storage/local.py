"""Filesystem ``ObjectStore``: the default for `pylon up` and single-machine use.

Layout under ``root_dir``::

    objects/<key>        object bytes, plain files (a key is its relative path)
    .meta/<xx>/<ino>     etag/size/metadata of the object file with inode <ino> (JSON)
    .locks/<nnn>.lock    striped per-key writer locks (fcntl.flock)
    .tmp/                temp files, renamed or linked into place
    .uploads/<id>/       multipart staging: ``key`` + one file per part

Why metadata is keyed by inode: a writer stages the new file, writes its metadata under the
temp file's inode, and only then renames (or links) the file into place, so the switch of bytes
*and* metadata is one atomic rename. Readers open the object first (pinning the inode, which can
then be neither reused nor rewritten) and read its metadata without taking a lock. Every mutation
of a key takes that key's exclusive ``flock``, so compare-and-swap is race-free across processes;
create-only uses ``os.link``, which fails atomically when the name exists.

Limitation: a filesystem cannot hold a file ``a`` and a directory ``a/``, so a key and a key
below it (``a`` and ``a/b``) cannot both exist here; the second write raises FailedPrecondition.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from pylon_services.common.errors import FailedPrecondition, InvalidArgument
from pylon_services.storage.base import (
    CompletedPart,
    EtagMismatch,
    ListPage,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    PagedListing,
)

MAX_KEY_BYTES = 1024  # S3's limit; enforced on every backend so keys stay portable
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for all but the last part, enforced here too
MAX_PART_NUMBER = 10_000
_LOCK_STRIPES = 1024
_COPY_BUFFER = 1 << 20
_READ_RETRIES = 50
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_PART_FILE = re.compile(r"^(\d{5})-([0-9a-f]{32})$")
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
MAX_METADATA_BYTES = 2048  # S3's limit for all user metadata together


def validate_key(key: str) -> str:
    """Reject keys that are not portable '/'-separated relative paths; returns the key."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument.field("key", "must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidArgument.field("key", f"must be at most {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise InvalidArgument.field("key", "must not start with '/'")
    if "\x00" in key or "\\" in key:
        raise InvalidArgument.field("key", "must not contain NUL or backslash")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgument.field("key", "must not contain empty, '.' or '..' segments")
    return key


def validate_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """User metadata that survives S3 unchanged: lowercase keys, printable ASCII values, <= 2 KiB.

    S3 carries metadata in HTTP headers, which lowercases names and mangles non-ASCII values,
    so the local store refuses the same things to keep both backends interchangeable.
    """
    clean = dict(metadata or {})
    total = 0
    for name, value in clean.items():
        if not isinstance(name, str) or not _METADATA_KEY.match(name):
            raise InvalidArgument.field(f"metadata[{name!r}]", "name must match [a-z0-9][a-z0-9_.-]*")
        if not isinstance(value, str) or not all(" " <= ch <= "~" for ch in value):
            raise InvalidArgument.field(f"metadata[{name!r}]", "value must be printable ASCII")
        total += len(name) + len(value)
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument.field("metadata", f"must be at most {MAX_METADATA_BYTES} bytes in all")
    return clean


def normalize_range(start: int | None, end: int | None) -> tuple[int, int | None]:
    """Validate a [start, end) byte range; returns (start, end) with start defaulted to 0."""
    first = 0 if start is None else start
    if first < 0 or (end is not None and end < 0):
        raise InvalidArgument.field("range", "start and end must be >= 0")
    return first, end


def multipart_etag(parts: list[CompletedPart]) -> str:
    """S3's multipart etag: md5 of the concatenated binary part md5s, then '-<count>'."""
    digest = hashlib.md5(b"".join(bytes.fromhex(_strip_etag(p.etag)) for p in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


def _strip_etag(etag: str) -> str:
    return etag.strip().strip('"')


class LocalObjectStore(PagedListing):
    """``ObjectStore`` over a directory; safe for many threads and processes on one machine."""

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root = Path(root_dir).resolve()
        self._objects = self.root / "objects"
        self._meta = self.root / ".meta"
        self._locks = self.root / ".locks"
        self._tmp = self.root / ".tmp"
        self._uploads = self.root / ".uploads"
        for folder in (self._objects, self._meta, self._locks, self._tmp, self._uploads):
            folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    # -- writes ---------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Write ``data`` atomically; create-only or compare-and-swap when asked."""
        validate_key(key)
        with self._staged(metadata) as stage:
            stage.write(data)
            return self._publish(key, stage, if_none_match=if_none_match, if_match=if_match)

    def put_file(self, key: str, path: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Copy a local file in, streaming (never whole in memory)."""
        validate_key(key)
        with open(path, "rb") as source, self._staged(metadata) as stage:
            stage.copy_from(source)
            return self._publish(key, stage)

    def delete(self, key: str) -> None:
        """Remove the object and its metadata; a missing key is fine."""
        path = self._object_path(key)
        with self._key_lock(key):
            try:
                inode = path.stat().st_ino
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return
            self._meta_path(inode).unlink(missing_ok=True)
            self._prune_empty_dirs(path.parent)

    def copy(self, src: str, dst: str, *, if_none_match: bool = False) -> ObjectInfo:
        """Copy bytes and metadata of ``src`` to ``dst`` (a real copy: ``dst`` is independent)."""
        validate_key(dst)
        with self._open(src) as (source, info), self._staged(info.metadata) as stage:
            stage.copy_from(source)
            return self._publish(dst, stage, if_none_match=if_none_match)

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Whole object or bytes [start, end); a range past the end yields what exists."""
        first, last = normalize_range(start, end)
        with self._open(key) as (handle, _info):
            handle.seek(first)
            if last is None:
                return handle.read()
            return handle.read(max(0, last - first))

    def iter_chunks(self, key: str, *, chunk_size: int = 1 << 20, offset: int = 0) -> Iterator[bytes]:
        """Open now (so a missing key raises here), then stream from ``offset`` lazily."""
        if chunk_size <= 0:
            raise InvalidArgument.field("chunk_size", "must be > 0")
        first, _ = normalize_range(offset, None)
        opened = self._open(key)
        handle, _info = opened.__enter__()

        def chunks() -> Iterator[bytes]:
            try:
                handle.seek(first)
                while chunk := handle.read(chunk_size):
                    yield chunk
            finally:
                opened.__exit__(None, None, None)

        return chunks()

    def get_file(self, key: str, path: str) -> ObjectInfo:
        """Stream to ``path`` via a temp file in its directory, then rename (no torn files)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
        with self._open(key) as (handle, info):
            try:
                with open(temp, "wb") as out:
                    shutil.copyfileobj(handle, out, _COPY_BUFFER)
                os.replace(temp, target)
            finally:
                temp.unlink(missing_ok=True)
        return info

    def head(self, key: str) -> ObjectInfo:
        with self._open(key) as (_handle, info):
            return info

    def exists(self, key: str) -> bool:
        return self._object_path(key).is_file()

    def list(self, prefix: str, *, page_size: int = 1000, page_token: str | None = None) -> ListPage:
        """Keys under ``prefix`` after ``page_token`` (the last key of the previous page).

        Like S3's ListObjectsV2, entries carry key, size and etag but no user metadata.
        """
        if page_size <= 0:
            raise InvalidArgument.field("page_size", "must be > 0")
        objects: builtins.list[ObjectInfo] = []
        for key in self._walk(self._objects, "", prefix, page_token or ""):
            if len(objects) == page_size:
                return ListPage(objects, objects[-1].key)
            try:
                info = self.head(key)
            except ObjectNotFound:  # deleted while we walked
                continue
            objects.append(ObjectInfo(info.key, info.size, info.etag))
        return ListPage(objects, None)

    def presign(self, method: str, key: str, *, expires_s: int = 3600, upload_id: str | None = None,
                part_number: int | None = None) -> str | None:
        """No URL form for local files: callers stream through the service instead."""
        return None

    def presign_put(self, key: str, *, expires_s: int = 3600, sha256: str = "") -> tuple[str, dict[str, str]] | None:
        return None

    def stored_sha256(self, key: str) -> str | None:
        return None  # files carry no verified checksum: callers hash them

    # -- multipart ------------------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        validate_key(key)
        upload_id = uuid.uuid4().hex
        folder = self._uploads / upload_id
        folder.mkdir()
        (folder / "key").write_text(key, encoding="utf-8")
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> CompletedPart:
        """Stage one part; re-uploading a part number replaces it (as on S3)."""
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise InvalidArgument.field("part_number", f"must be in 1..{MAX_PART_NUMBER}")
        folder = self._upload_dir(key, upload_id)
        etag = hashlib.md5(data).hexdigest()
        temp = self._tmp / f"part-{uuid.uuid4().hex}"
        temp.write_bytes(data)
        with self._key_lock(f"upload:{upload_id}"):
            for old in folder.glob(f"{part_number:05d}-*"):
                old.unlink(missing_ok=True)
            try:
                os.replace(temp, folder / f"{part_number:05d}-{etag}")
            except FileNotFoundError:  # aborted or completed meanwhile
                temp.unlink(missing_ok=True)
                raise ObjectNotFound(f"no multipart upload {upload_id} for key {key!r}") from None
        return CompletedPart(part_number, etag)

    def list_parts(self, key: str, upload_id: str) -> builtins.list[CompletedPart]:
        """Parts staged so far, by part number."""
        return [part for part, _path in self._staged_parts(self._upload_dir(key, upload_id))]

    def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[CompletedPart]) -> ObjectInfo:
        """Concatenate the named parts into the object (atomically) and drop the upload."""
        folder = self._upload_dir(key, upload_id)
        claimed = self._uploads / f"{upload_id}.completing"
        with self._key_lock(f"upload:{upload_id}"):
            paths = self._check_parts(folder, parts)
            # Claim the upload so parts stop changing; the key's lock is taken only after this
            # one is released (never nest two stripes: they may be the same file).
            os.rename(folder, claimed)
        try:
            with self._staged(None) as stage:
                for path in paths:
                    with open(claimed / path.name, "rb") as source:
                        stage.copy_from(source)
                stage.etag = multipart_etag(parts)
                info = self._publish(key, stage)
        except BaseException:
            os.rename(claimed, folder)  # leave the upload resumable, as S3 does
            raise
        shutil.rmtree(claimed, ignore_errors=True)
        return info

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop the staged parts; aborting an unknown or finished upload is fine."""
        try:
            folder = self._upload_dir(key, upload_id)
        except ObjectNotFound:
            return
        with self._key_lock(f"upload:{upload_id}"):
            shutil.rmtree(folder, ignore_errors=True)

    # -- internals: paths, locks, staging -------------------------------------------------

    def _object_path(self, key: str) -> Path:
        return self._objects / validate_key(key)

    def _meta_path(self, inode: int) -> Path:
        return self._meta / f"{inode % 256:02x}" / str(inode)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Exclusive cross-process lock for one key (striped over a fixed set of lock files)."""
        stripe = int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()[:4], "big")
        path = self._locks / f"{stripe % _LOCK_STRIPES:04d}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    @contextmanager
    def _staged(self, metadata: dict[str, str] | None) -> Iterator[_StagedFile]:
        """A temp file in ``.tmp``; removed (with its metadata) unless it was published."""
        stage = _StagedFile(self._tmp / f"obj-{uuid.uuid4().hex}", validate_metadata(metadata))
        try:
            yield stage
        finally:
            stage.close()
            if not stage.published:  # its inode is free again: drop the record made for it
                self._meta_path(stage.inode).unlink(missing_ok=True)
            stage.path.unlink(missing_ok=True)

    def _publish(
        self, key: str, stage: _StagedFile, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        """Write the stage's metadata, then move it to ``key`` under the key's lock."""
        if if_none_match and if_match is not None:
            raise InvalidArgument.field("if_match", "cannot be combined with if_none_match")
        info = stage.finish(key)
        self._write_meta(stage.inode, info)
        path = self._object_path(key)
        with self._key_lock(key):
            old_inode = self._current_inode(path)
            if if_none_match and old_inode is not None:
                raise ObjectExists(f"object {key!r} already exists")
            if if_match is not None:
                self._check_etag(key, _strip_etag(if_match))
            self._move_into_place(stage.path, path, key, create_only=if_none_match)
            stage.published = True
            if old_inode is not None and old_inode != stage.inode:
                self._meta_path(old_inode).unlink(missing_ok=True)
        return info

    def _current_inode(self, path: Path) -> int | None:
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return st.st_ino

    def _check_etag(self, key: str, expected: str) -> None:
        """Called under the key's lock; reading is lock-free, so this cannot deadlock."""
        try:
            current = self.head(key).etag
        except ObjectNotFound:
            current = None
        if current != expected:
            raise EtagMismatch(f"object {key!r} does not have etag {expected!r}")

    def _move_into_place(self, temp: Path, path: Path, key: str, *, create_only: bool) -> None:
        """``os.link`` for create-only (fails if the name exists), ``os.replace`` otherwise."""
        for _attempt in range(5):  # a concurrent delete may prune the parent we just made
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if create_only:
                    os.link(temp, path)  # the staged name is unlinked by _staged()
                else:
                    os.replace(temp, path)
                return
            except FileExistsError as err:
                if create_only and path.is_file():
                    raise ObjectExists(f"object {key!r} already exists") from err
                raise self._conflict(key) from err
            except (IsADirectoryError, NotADirectoryError) as err:
                raise self._conflict(key) from err
            except FileNotFoundError:
                if not temp.exists():
                    raise
        raise FailedPrecondition(f"could not create the parent folders of {key!r}")

    @staticmethod
    def _conflict(key: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"key {key!r} collides with an object that is its prefix, or with keys below it "
            "(the local store cannot hold both 'a' and 'a/b')"
        )

    def _prune_empty_dirs(self, folder: Path) -> None:
        while folder != self._objects and self._objects in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # -- internals: metadata and reading --------------------------------------------------

    def _write_meta(self, inode: int, info: ObjectInfo) -> None:
        path = self._meta_path(inode)
        path.parent.mkdir(exist_ok=True)
        record = {"etag": info.etag, "size": info.size, "metadata": info.metadata}
        temp = self._tmp / f"meta-{uuid.uuid4().hex}"
        temp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(temp, path)

    def _read_meta(self, inode: int, path: Path, size: int | None = None) -> ObjectInfo | None:
        """The stored record for ``inode``, or None when missing or not matching ``size``."""
        try:
            record = json.loads(self._meta_path(inode).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if size is not None and record["size"] != size:
            return None
        key = str(path.relative_to(self._objects))
        return ObjectInfo(key, record["size"], record["etag"], dict(record["metadata"]))

    @contextmanager
    def _open(self, key: str) -> Iterator[tuple[BinaryIO, ObjectInfo]]:
        """Open the object and its matching metadata as one consistent snapshot."""
        path = self._object_path(key)
        for _attempt in range(_READ_RETRIES):
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed by the with-block below
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise ObjectNotFound(f"object {key!r} not found") from None
            st = os.fstat(handle.fileno())
            info = self._read_meta(st.st_ino, path, st.st_size)
            if info is None and self._current_inode(path) == st.st_ino:
                info = self._repair_meta(handle, st.st_ino, key)  # file placed by hand
            if info is not None:
                try:
                    yield handle, info
                finally:
                    handle.close()
                return
            handle.close()  # replaced while we looked: try the new file
        raise FailedPrecondition(f"object {key!r} keeps changing; giving up after {_READ_RETRIES} tries")

    def _repair_meta(self, handle: BinaryIO, inode: int, key: str) -> ObjectInfo:
        """Metadata for a file that has none (copied in by hand, or a crash): md5 it now."""
        digest = hashlib.md5()
        size = 0
        while chunk := handle.read(_COPY_BUFFER):
            digest.update(chunk)
            size += len(chunk)
        handle.seek(0)
        info = ObjectInfo(key, size, digest.hexdigest(), {})
        self._write_meta(inode, info)
        return info

    # -- internals: multipart -------------------------------------------------------------

    def _upload_dir(self, key: str, upload_id: str) -> Path:
        validate_key(key)
        missing = ObjectNotFound(f"no multipart upload {upload_id!r} for key {key!r}")
        if not isinstance(upload_id, str) or not _UPLOAD_ID.match(upload_id):
            raise missing
        folder = self._uploads / upload_id
        try:
            if (folder / "key").read_text(encoding="utf-8") != key:
                raise missing
        except FileNotFoundError:
            raise missing from None
        return folder

    @staticmethod
    def _staged_parts(folder: Path) -> builtins.list[tuple[CompletedPart, Path]]:
        found = []
        for path in folder.iterdir():
            match = _PART_FILE.match(path.name)
            if match:
                found.append((CompletedPart(int(match.group(1)), match.group(2)), path))
        return sorted(found, key=lambda item: item[0].part_number)

    def _check_parts(self, folder: Path, parts: builtins.list[CompletedPart]) -> builtins.list[Path]:
        """S3's rules: at least one part, ascending numbers, known etags, >= 5 MiB but the last."""
        if not parts:
            raise InvalidArgument.field("parts", "at least one part is required")
        numbers = [p.part_number for p in parts]
        if numbers != sorted(set(numbers)):
            raise InvalidArgument.field("parts", "part numbers must be unique and ascending")
        staged = {part.part_number: (part.etag, path) for part, path in self._staged_parts(folder)}
        paths = []
        for index, part in enumerate(parts):
            etag, path = staged.get(part.part_number, (None, None))
            if path is None or etag != _strip_etag(part.etag):
                raise InvalidArgument.field("parts", f"part {part.part_number} was not uploaded with that etag")
            if index < len(parts) - 1 and path.stat().st_size < MIN_PART_SIZE:
                raise InvalidArgument.field("parts", f"part {part.part_number} is smaller than 5 MiB")
            paths.append(path)
        return paths

    def _walk(self, folder: Path, base: str, prefix: str, after: str) -> Iterator[str]:
        """Keys under ``folder`` (whose keys start with ``base``) in key order.

        A folder's entries sort as ``name + '/'`` so that, e.g., ``a.c`` comes before ``a/b``
        exactly as full-key order says; subtrees wholly outside ``prefix`` or at/before
        ``after`` are skipped without being read.
        """
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        ordered = sorted(((e.name + "/" if e.is_dir() else e.name), e) for e in entries)
        for name, entry in ordered:
            full = base + name
            if name.endswith("/"):
                in_prefix = full.startswith(prefix) or prefix.startswith(full)
                not_done = full > after or after.startswith(full)
                if in_prefix and not_done:
                    yield from self._walk(Path(entry.path), full, prefix, after)
            elif full.startswith(prefix) and full > after:
                yield full


class _StagedFile:
    """A temp object file being written, hashed on the way in."""

    def __init__(self, path: Path, metadata: dict[str, str]) -> None:
        self.path = path
        self.metadata = metadata
        self.etag: str | None = None  # overrides the content md5 (multipart objects)
        self.published = False
        self._md5 = hashlib.md5()
        self._size = 0
        self._handle: IO[bytes] | None = open(path, "xb")  # noqa: SIM115 - closed by close()
        self.inode = os.fstat(self._handle.fileno()).st_ino

    def write(self, data: bytes) -> None:
        assert self._handle is not None
        self._handle.write(data)
        self._md5.update(data)
        self._size += len(data)

    def copy_from(self, source: BinaryIO) -> None:
        while chunk := source.read(_COPY_BUFFER):
            self.write(chunk)

    def finish(self, key: str) -> ObjectInfo:
        """Flush to disk (so a crash never publishes a torn file) and describe the object."""
        assert self._handle is not None
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.close()
        return ObjectInfo(key, self._size, self.etag or self._md5.hexdigest(), dict(self.metadata))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

