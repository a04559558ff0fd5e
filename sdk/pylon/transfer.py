"""Moving bytes between this machine and the object store, for datasets and model artifacts.

Uploads go straight to object storage through presigned URLs (the services never carry the
bytes): a file is hashed once (sha256, cached by path, size and mtime so re-sending an unchanged
file costs no hashing), split into parts, and the parts are PUT in parallel. A resumed upload
sends only the parts the store does not already hold. Downloads use ranged GETs in parallel,
resume from a partial file, verify the sha256, and land in a local cache keyed by digest, so the
second load of the same content reads nothing from the network.

Only the standard library is used for HTTP (``http.client`` with 1 MiB socket writes), one
keep-alive connection per worker thread.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import google_crc32c

Progress = Callable[[int], None]  # called with the number of bytes just moved


class ProgressTotal:
    """Adds up the byte counts parallel transfer threads report (a ``Progress``) and hands
    ``report(done, total)`` the running total; safe to call from several threads."""

    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self._report = total, 0, report
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            done = self.done
        if self._report:
            self._report(done, self.total)
DEFAULT_PART_SIZE = 16 << 20
DEFAULT_CONCURRENCY = 8
_IO_BLOCK = 1 << 20


class TransferError(Exception):
    """A transfer failed (HTTP error, or bytes that do not match their digest)."""


# -- hashing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileHashes:
    """The sha256 of a whole file and its size."""

    path: str
    size: int
    sha256: str  # "sha256:<hex>"


def _cache_root() -> str:
    return os.environ.get("PYLON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pylon")


def cache_dir(kind: str) -> str:
    """A folder of the local cache (``$PYLON_CACHE_DIR/<kind>``), created on first use."""
    path = os.path.join(_cache_root(), kind)
    os.makedirs(path, exist_ok=True)
    return path


def file_key(path: str, *extra: object) -> str:
    """Identity of a file's current contents for caches: path, size, mtime and inode (plus
    ``extra``, e.g. a part size); any change to the file gives a new key."""
    st = os.stat(path)
    ident = "\0".join(map(str, (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, *extra)))
    return hashlib.sha256(ident.encode()).hexdigest()


def cached_hash(path: str) -> FileHashes | None:
    """The remembered sha256 of ``path`` if this exact file (path, size, mtime, inode) was hashed
    before, without reading it; else None."""
    marker = os.path.join(cache_dir("hashes"), file_key(path))
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return FileHashes(path, os.path.getsize(path), f.read().strip())


def hash_file(path: str, *, progress: Progress | None = None, use_cache: bool = True) -> FileHashes:
    """sha256 of ``path``; remembered under the cache dir keyed by (path, size, mtime, inode), so an
    unchanged file is never hashed twice."""
    size = os.path.getsize(path)
    if use_cache and (known := cached_hash(path)) is not None:
        return known
    marker = os.path.join(cache_dir("hashes"), file_key(path)) if use_cache else ""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress:
                progress(n)
    digest = f"sha256:{h.hexdigest()}"
    if marker:
        _atomic_write(marker, digest.encode())
    return FileHashes(path, size, digest)


def part_hashes(path: str, part_size: int, progress: Progress | None = None) -> tuple[str, list[str]]:
    """("sha256:<hex>", [hex MD5 of each part]) in one read of the file (the MD5s run on a second
    thread: hashlib releases the GIL); what an ingest upload session declares so that commit can
    check each part's ETag. Cached like ``hash_file``, keyed also by the part size."""
    marker = os.path.join(cache_dir("parthashes"), file_key(path, part_size))
    if os.path.exists(marker):
        with open(marker) as f:
            doc = json.load(f)
        return doc["sha256"], doc["md5s"]
    sha, md5s = hashlib.sha256(), list[str]()
    with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(1) as pool:
        while True:
            part = f.read(part_size)
            if not part and md5s:
                break
            future = pool.submit(lambda b: hashlib.md5(b, usedforsecurity=False).hexdigest(), part)
            sha.update(part)
            md5s.append(future.result())
            if progress:
                progress(len(part))
            if len(part) < part_size:
                break
    digest = f"sha256:{sha.hexdigest()}"
    _atomic_write(marker, json.dumps({"sha256": digest, "md5s": md5s}).encode())
    return digest, md5s


def part_ranges(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number from 1, offset, length) covering ``size`` bytes; one empty part for an empty file."""
    if size == 0:
        return [(1, 0, 0)]
    return [(i + 1, off, min(part_size, size - off)) for i, off in enumerate(range(0, size, part_size))]


# -- HTTP -----------------------------------------------------------------------------------------
class _Connections:
    """One keep-alive connection per (thread, host)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        u = urllib.parse.urlsplit(url)
        pool: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        key = f"{u.scheme}://{u.netloc}"
        conn = pool.get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            conn = cls(u.netloc, timeout=300, blocksize=_IO_BLOCK)
            pool[key] = conn
        return conn, u.path + (f"?{u.query}" if u.query else "")

    def drop(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        conn = self._local.__dict__.get("pool", {}).pop(f"{u.scheme}://{u.netloc}", None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._local.__dict__.get("pool", {}).values():
            conn.close()


class _FileSlice:
    """A read-only window of a file, given to http.client as a request body."""

    def __init__(self, path: str, offset: int, length: int, progress: Progress | None) -> None:
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._f.seek(offset)
        self._left = length
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n) if n > 0 else b""
        self._left -= len(data)
        if self._progress and data:
            self._progress(len(data))
        return data

    def close(self) -> None:
        self._f.close()


def _request(conns: _Connections, method: str, url: str, *, body: _FileSlice | bytes | None = None,
             length: int = 0, headers: dict[str, str] | None = None, retries: int = 3) -> http.client.HTTPResponse:
    """One HTTP request on this thread's connection; reconnects and retries on a dropped socket."""
    hdrs = dict(headers or {})
    if method in ("PUT", "POST"):
        hdrs["Content-Length"] = str(length)
    for attempt in range(retries):
        conn, path = conns.get(url)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            return conn.getresponse()
        except (ConnectionError, http.client.HTTPException, TimeoutError):
            conns.drop(url)
            if attempt == retries - 1 or isinstance(body, _FileSlice):
                raise
    raise AssertionError("unreachable")


def _check(resp: http.client.HTTPResponse, what: str) -> bytes:
    data = resp.read()
    if resp.status >= 300:
        raise TransferError(f"{what}: HTTP {resp.status}: {data[:300].decode(errors='replace')}")
    return data


# -- upload ---------------------------------------------------------------------------------------
def put_file(path: str, url: str, *, progress: Progress | None = None, headers: dict[str, str] | None = None) -> str:
    """PUT a whole file to one presigned URL with the ``headers`` signed into it (the registry
    sends them with the URL: ``If-None-Match: *``, create-only, and the sha256 the store verifies
    when the file has one); returns the ETag, or "" when the object was already created (an
    earlier try whose answer was lost: the bytes are verified at registration either way)."""
    size = os.path.getsize(path)
    conns = _Connections()
    try:
        body = _FileSlice(path, 0, size, progress)
        try:
            resp = _request(conns, "PUT", url, body=body, length=size, headers=headers or {})
        finally:
            body.close()
        if resp.status == 412:
            resp.read()
            return ""
        _check(resp, f"upload of {os.path.basename(path)}")
        return (resp.getheader("ETag") or "").strip('"')
    finally:
        conns.close()


def upload_parts(path: str, part_size: int, urls: dict[int, str], *, concurrency: int = DEFAULT_CONCURRENCY,
                 progress: Progress | None = None, md5: bool = False) -> dict[int, str]:
    """PUT the given parts of ``path`` (part number -> presigned URL) in parallel; returns part
    number -> ETag, or with ``md5`` the hex MD5 of the bytes sent (hashed while they are sent,
    for a commit to check against the stored parts' ETags). Parts not in ``urls`` are skipped:
    that is how a resumed upload sends only what is missing. A failed part is retried once on a
    fresh connection (and hashed afresh)."""
    ranges = {n: (off, ln) for n, off, ln in part_ranges(os.path.getsize(path), part_size)}
    unknown = set(urls) - set(ranges)
    if unknown:
        raise TransferError(f"part numbers {sorted(unknown)} are beyond the end of {path}")
    conns = _Connections()

    def send(n: int) -> tuple[int, str]:
        off, ln = ranges[n]
        for attempt in range(2):
            body = _HashingSlice(path, off, ln, progress) if md5 else _FileSlice(path, off, ln, progress)
            try:
                resp = _request(conns, "PUT", urls[n], body=body, length=ln)
                _check(resp, f"part {n} of {os.path.basename(path)}")
                if isinstance(body, _HashingSlice):
                    return n, body.md5.hexdigest()
                return n, (resp.getheader("ETag") or "").strip('"')
            except (OSError, http.client.HTTPException, TransferError):
                conns.drop(urls[n])
                if attempt == 1:
                    raise
            finally:
                body.close()
        raise AssertionError("unreachable")

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(urls) or 1))) as pool:
            return dict(pool.map(send, sorted(urls)))
    finally:
        conns.close()


# -- download -------------------------------------------------------------------------------------
class _InOrderHasher:
    """Hashes a file's parts in order on its own thread while later parts still download: each
    finished part is fed once every part before it is done, so verification overlaps the
    transfer instead of following it, and the download threads never wait for the hash."""

    def __init__(self, path: str, ranges: list[tuple[int, int, int]], algo: str = "sha256") -> None:
        self.path, self.ranges, self.algo = path, ranges, algo
        self.h: Any = hashlib.sha256() if algo == "sha256" else google_crc32c.Checksum()
        self._ready: set[int] = set()
        self._aborted = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def part_done(self, n: int) -> None:
        with self._cond:
            self._ready.add(n)
            self._cond.notify()

    def abort(self) -> None:
        """The download failed: stop waiting for parts that will not come."""
        with self._cond:
            self._aborted = True
            self._cond.notify()

    def _run(self) -> None:
        with open(self.path, "rb", buffering=0) as f:  # page-cache hot: just written
            for n, off, ln in self.ranges:
                with self._cond:
                    self._cond.wait_for(lambda n=n: n in self._ready or self._aborted)  # type: ignore[misc]
                    if self._aborted:
                        return
                f.seek(off)
                left = ln
                while left:
                    chunk = f.read(min(_IO_BLOCK * 8, left))
                    self.h.update(chunk)
                    left -= len(chunk)

    def digest(self) -> str:
        """``sha256:<hex>``, or ``crc32c:<decimal>`` for the CRC32C."""
        self._thread.join()
        if self.algo == "sha256":
            return f"sha256:{self.h.hexdigest()}"
        return f"crc32c:{int.from_bytes(self.h.digest(), 'big')}"


def download(url: str, dest: str, *, size: int, sha256: str = "", crc32c: int = 0,
             concurrency: int = DEFAULT_CONCURRENCY, part_size: int = DEFAULT_PART_SIZE,
             progress: Progress | None = None) -> str:
    """Fetch ``url`` into ``dest`` with parallel ranged GETs, resuming from ``dest + '.part'``
    (and its record of finished ranges) if an earlier attempt was interrupted, and verify the
    bytes (computed while the transfer runs) before the file appears under ``dest``: against
    ``crc32c`` when given (a fifth of sha256's CPU; the registry computed it over the bytes whose
    sha256 it verified), else against ``sha256``."""
    partial, ledger = dest + ".part", dest + ".part.json"
    done: set[int] = set()
    if os.path.exists(partial) and os.path.exists(ledger) and os.path.getsize(partial) == size:
        with open(ledger) as f:
            state = json.load(f)
        if state.get("part_size") == part_size and state.get("sha256") == sha256:
            done = set(state["done"])
    else:
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        with open(partial, "wb") as blank:
            blank.truncate(size)
    ranges = part_ranges(size, part_size)
    if progress and done:
        progress(sum(ln for n, _, ln in ranges if n in done))
    want = f"crc32c:{crc32c}" if crc32c else sha256
    hasher = _InOrderHasher(partial, ranges, "crc32c" if crc32c else "sha256")
    for n in sorted(done):
        hasher.part_done(n)
    lock = threading.Lock()
    conns = _Connections()

    def fetch(part: tuple[int, int, int]) -> None:
        n, off, ln = part
        if ln:
            resp = _request(conns, "GET", url, headers={"Range": f"bytes={off}-{off + ln - 1}"})
            if resp.status not in (200, 206):
                _check(resp, f"download of {os.path.basename(dest)}")
            with open(partial, "r+b") as f:
                f.seek(off)
                got = 0
                while chunk := resp.read(_IO_BLOCK):
                    f.write(chunk)
                    got += len(chunk)
                    if progress:
                        progress(len(chunk))
            if got != ln:
                raise TransferError(f"download of {os.path.basename(dest)}: got {got} of {ln} bytes at {off}")
        with lock:
            done.add(n)
            _atomic_write(ledger, json.dumps({"part_size": part_size, "sha256": sha256, "done": sorted(done)}).encode())
        hasher.part_done(n)

    todo = [p for p in ranges if p[0] not in done]
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(todo) or 1))) as pool:
            list(pool.map(fetch, todo))
    except BaseException:
        hasher.abort()
        raise
    finally:
        conns.close()
    if want and hasher.digest() != want:
        os.remove(partial)
        os.remove(ledger)
        raise TransferError(f"{os.path.basename(dest)}: downloaded bytes hash to {hasher.digest()}, expected {want}")
    os.replace(partial, dest)
    if os.path.exists(ledger):
        os.remove(ledger)
    return dest


# -- local cache ----------------------------------------------------------------------------------
class BlobCache:
    """Verified files on local disk, keyed by sha256 (``$PYLON_CACHE_DIR/blobs/sha256/<hex>``)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.join(root or _cache_root(), "blobs")

    def path(self, digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return os.path.join(self.root, "sha256", hexd[:2], hexd)

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def fetch(self, digest: str, size: int, url: str, **kw: object) -> str:
        """The cached file for ``digest``, downloading (resumably, verified) if missing."""
        target = self.path(digest)
        if not os.path.exists(target):
            download(url, target, size=size, sha256=digest, **kw)  # type: ignore[arg-type]
            os.chmod(target, 0o444)  # read-only: materialized hard links must not edit the cache
        return target

    def adopt(self, digest: str, data_path: str) -> str:
        """Move an already-verified file into the cache (used by streamed downloads)."""
        target = self.path(digest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.chmod(data_path, 0o444)
        os.replace(data_path, target)
        return target


def materialize(files: Iterable[tuple[str, str]], dest_dir: str, *, link: bool = False) -> list[str]:
    """Lay out cached blobs as ``dest_dir/<relative path>``. ``files`` are (relative path, cached
    blob path). With ``link``, hard links where the filesystem allows (the cache's own model
    directories: no copy, and cached blobs are read-only so an in-place edit fails instead of
    corrupting the cache); otherwise editable copies."""
    out = []
    root = os.path.realpath(dest_dir)
    for rel, blob in files:
        parts = rel.split("/")
        if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in parts):
            raise TransferError(f"refusing to write outside {dest_dir}: {rel[:80]!r}")
        target = os.path.join(dest_dir, rel)
        # A directory on the way that is a symlink out of dest_dir would carry the write elsewhere.
        parent = os.path.realpath(os.path.dirname(target))
        if parent != root and not parent.startswith(root.rstrip(os.sep) + os.sep):
            raise TransferError(f"refusing to write {rel[:80]!r}: {os.path.dirname(target)} leads outside {dest_dir}")
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        if os.path.lexists(target):
            os.remove(target)  # a file or a symlink: replaced by a regular file, never written through
        try:
            if not link:
                raise OSError("copy requested")
            os.link(blob, target)
        except OSError:
            shutil.copyfile(blob, target)
        out.append(target)
    return out


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- upload, hashing each part while it is sent ------------------------------------------------------
class _HashingSlice(_FileSlice):
    """A file window that MD5s exactly the bytes it hands to http.client (the ETag the object
    store will compute for the part if nothing is lost or changed in transit)."""

    def __init__(self, path: str, offset: int, length: int, progress: Progress | None) -> None:
        super().__init__(path, offset, length, progress)
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        self.md5.update(data)  # releases the GIL for large blocks: hidden behind the socket writes
        return data


def upload_parts_md5(path: str, part_size: int, urls: dict[int, str], *, concurrency: int = DEFAULT_CONCURRENCY,
                     progress: Progress | None = None) -> dict[int, str]:
    """``upload_parts(..., md5=True)``: part number -> hex MD5 of the bytes sent, which saves the
    separate MD5 pass over the file before the upload."""
    return upload_parts(path, part_size, urls, concurrency=concurrency, progress=progress, md5=True)


def part_md5s(path: str, part_size: int, numbers: Iterable[int]) -> dict[int, str]:
    """Hex MD5 of the given parts of ``path`` (the parts a resumed upload sent in an earlier run)."""
    ranges = {n: (off, ln) for n, off, ln in part_ranges(os.path.getsize(path), part_size)}
    out = {}
    with open(path, "rb", buffering=0) as f:
        for n in numbers:
            off, ln = ranges[n]
            f.seek(off)
            h = hashlib.md5(usedforsecurity=False)
            while ln > 0 and (block := f.read(min(ln, 8 << 20))):
                h.update(block)
                ln -= len(block)
            out[n] = h.hexdigest()
    return out
