"""Content-addressed blobs and JSON documents on the object store (shared by ingest and registry)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import google_crc32c

from pylon_services.common import deadline, paging
from pylon_services.storage.base import ObjectExists, ObjectNotFound, ObjectStore


def blob_key(tenant: str, digest: str) -> str:
    """Object key of a blob: ``tenants/{t}/blobs/sha256/{hex}``; digest is ``sha256:<hex>``."""
    return f"tenants/{tenant}/blobs/sha256/{digest.split(':', 1)[1]}"


def digests_of_object(store: ObjectStore, key: str, *, size: int | None = None, part: int = 16 << 20,
                      threads: int = 4) -> tuple[str, int, int]:
    """(``sha256:<hex>``, size, CRC32C) of an object without holding it in memory. Large objects
    are read as ranged GETs, ``threads`` in flight, hashed in order: bounded memory (threads x
    part) at several streams' throughput. The CRC32C costs ~1/5 of the sha256 and lets clients
    check downloads cheaply."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    total = store.head(key).size if size is None else size
    h, crc = hashlib.sha256(), google_crc32c.Checksum()
    if total <= part:
        data = store.get(key)
        h.update(data)
        crc.update(data)
        return f"sha256:{h.hexdigest()}", len(data), int.from_bytes(crc.digest(), "big")
    offsets = iter(range(0, total, part))
    done = 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        inflight: deque[Future[bytes]] = deque()

        def more() -> None:
            off = next(offsets, None)
            if off is not None:
                inflight.append(pool.submit(store.get, key, start=off, end=min(off + part, total)))

        for _ in range(threads):
            more()
        while inflight:
            chunk = inflight.popleft().result()
            h.update(chunk)
            crc.update(chunk)
            done += len(chunk)
            more()
    return f"sha256:{h.hexdigest()}", done, int.from_bytes(crc.digest(), "big")


def store_blob_from(store: ObjectStore, tenant: str, src_key: str, digest: str) -> str:
    """Copy ``src_key`` into the content-addressed area (server-side; skipped when present)."""
    dst = blob_key(tenant, digest)
    if not store.exists(dst):
        try:
            store.copy(src_key, dst, if_none_match=True)
        except ObjectExists:
            pass  # same digest written concurrently: same bytes
    return dst


def manifest_digest(files: list[dict[str, Any]]) -> str:
    """Digest over (path, digest) pairs, order-independent: identifies a version's content."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        h.update(f"{f['path']}\0{f['digest']}\n".encode())
    return f"sha256:{h.hexdigest()}"


def read_json(store: ObjectStore, key: str) -> dict[str, Any]:
    return json.loads(store.get(key))


def read_json_or_none(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        return read_json(store, key)
    except ObjectNotFound:
        return None


def read_json_with_etag(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """A JSON document with its store etag under ``_etag`` (None if absent), for a later CAS.
    Head first, then get: if it changes in between, the etag is older than the body and that
    CAS simply fails."""
    try:
        etag = store.head(key).etag
        return {**read_json(store, key), "_etag": etag}
    except ObjectNotFound:
        return None


def dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def numbered_key(prefix: str, n: int) -> str:
    """Key of document ``n`` under ``prefix``: zero-padded, so keys list in number order."""
    return f"{prefix}{n:010d}.json"


_HINT_BACK = 1000  # how far below a (never expected) stale hint the probe looks
MAX_GAP_PROBES = 1000  # unpublished numbers one page of ``page_numbered`` looks past


def _hint_key(prefix: str) -> str:
    return f"{prefix}latest.json"


def note_latest(store: ObjectStore, prefix: str, n: int) -> None:
    """Move the ``latest`` hint to ``n`` (a hint only: ``latest_number`` probes from it)."""
    store.put(_hint_key(prefix), dump({"n": n, "ts": time.time()}))


def allocate_numbered(store: ObjectStore, prefix: str, doc_for: Any, start: int = 1) -> tuple[int, dict[str, Any]]:
    """Write ``{prefix}{n:010d}.json`` with the first free n >= start, create-only.

    Race-free without read-then-write: the create-only put is the allocation, so concurrent
    writers each get a distinct number and a reader never sees a half-written document.
    ``doc_for(n)`` builds the document for number n. A ``latest`` hint speeds up the probe.
    """
    hint = read_json_or_none(store, _hint_key(prefix))
    n = max(start, int(hint["n"]) + 1 if hint else 1)
    while True:
        doc = doc_for(n)
        try:
            store.put(numbered_key(prefix, n), dump(doc), if_none_match=True)
        except ObjectExists:
            n += 1
            continue
        note_latest(store, prefix, n)
        return n, doc


def latest_number(store: ObjectStore, prefix: str) -> int:
    """Highest allocated number (0 if none): start from the hint and probe upward."""
    hint = read_json_or_none(store, _hint_key(prefix))
    n = int(hint["n"]) if hint else 0
    while store.exists(numbered_key(prefix, n + 1)):
        deadline.check("finding the latest number")
        n += 1
    for _ in range(_HINT_BACK):
        if n <= 0 or store.exists(numbered_key(prefix, n)):
            break
        n -= 1  # hint ahead of reality cannot happen, but never trust a hint blindly
    return n


def read_numbered(store: ObjectStore, prefix: str, version: str) -> dict[str, Any] | None:
    """Document ``version`` (a number or "latest") under ``prefix``, or None."""
    if version != "latest" and not (version.isascii() and version.isdigit() and len(version) <= 10):
        return None
    n = latest_number(store, prefix) if version == "latest" else int(version)
    return read_json_or_none(store, numbered_key(prefix, n)) if n > 0 else None


def page_numbered(store: ObjectStore, prefix: str, page_size: int, page_token: str | None,
                  read: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, ``page_size`` at a time. The token holds the next number to look at, never
    above the latest (a forged one cannot start a long walk). ``read(n)`` returns the document or
    None for a number nobody published (explicit version numbers can leave gaps): a page looks
    at most ``page_size + MAX_GAP_PROBES`` numbers and stops at ``paging.MAX_PAGE_BYTES``, so
    its cost is bounded whatever the token or the numbering."""
    latest = latest_number(store, prefix)
    start = paging.decode_int_token(page_token or "", "numbered", prefix, hi=latest)
    n = latest if start is None else start
    out: list[dict[str, Any]] = []
    budget = paging.PageBudget()
    probes = page_size + MAX_GAP_PROBES
    while n > 0 and len(out) < page_size and probes > 0:
        deadline.check("listing")
        doc = read(n)
        if doc is not None:
            if not budget.take(doc):
                break
            out.append(doc)
        n -= 1
        probes -= 1
    return out, (paging.encode_token("numbered", n, prefix) if n > 0 else None)
