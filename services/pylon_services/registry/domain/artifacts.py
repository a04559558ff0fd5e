"""Artifact files of model versions: staging uploads, verification, content-addressed blobs.

Bytes never pass through the registry when object storage can take them directly: the SDK asks
for an upload session, PUTs files (or multipart parts) to presigned URLs under
``tenants/{t}/blobs/staged/{id}/{i}``, and registers. Registration then verifies every staged
file's sha256 and size server-side (parallel ranged reads) and only then lets a manifest point at
it: the staged object becomes the blob where it lies (no copy). The index maps each verified
digest to its object, which is what makes "already present, skip the upload" safe. Files
registered from a job's output (an object prefix) are hashed and copied server-side to
``tenants/{t}/blobs/sha256/{hex}``. Stores without presigned URLs (the local filesystem) take the
bytes through the ``UploadArtifact`` stream into the same staging keys.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pylon_services.common import blobs
from pylon_services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from pylon_services.common.limits import quote
from pylon_services.common.paths import check_path as _check_path
from pylon_services.storage.base import CompletedPart, ObjectExists, ObjectNotFound, ObjectStore

MAX_FILES = 10_000
MAX_FILE_BYTES = 5 << 40  # S3's largest object
MIN_PART = 5 << 20
MAX_PART = 5 << 30
MAX_EXPIRES_S = 7 * 24 * 3600  # the longest a presigned S3 URL may live
_UPLOAD_ID = re.compile(r"^u[0-9a-f]{32}$")
_VERIFY_THREADS = 4
# Files with a declared sha256 up to this size go in one PUT the object store verifies
# (``create_upload``); settable with PYLON_REGISTRY_VERIFIED_PUT_MAX_BYTES.
VERIFIED_PUT_MAX = 1 << 30
# Files from this size on get a CRC32C (cheap download checks) when registered without one;
# smaller files are checked by sha256, which costs next to nothing at their size.
CRC_MIN_BYTES = 8 << 20

log = logging.getLogger("pylon.registry")


@dataclass
class DeclaredFile:
    path: str
    digest: str = ""  # "sha256:<hex>"; empty: compute from the stored bytes (or, in an upload
    # session, declared at registration: the client hashed while it uploaded)
    size: int = -1


@dataclass
class UploadSession:
    id: str
    tenant: str
    part_size: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {key, digest, size, upload_id|""}

    @property
    def prefix(self) -> str:
        return f"tenants/{self.tenant}/blobs/staged/{self.id}/"


KnownBlob = Callable[[str], "str | None"]  # digest -> object key of verified bytes, or None


def check_path(path: str, field: str = "") -> str:
    """An artifact path: the platform's one rule (``common.paths.check_path``)."""
    return _check_path(field or f"files[{quote(path, 32)}]", path)


def check_digest(path: str, digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise InvalidArgument.field(f"files[{path}].digest", "must be 'sha256:' followed by 64 lowercase hex digits")
    return digest


def check_size(path: str, size: int, *, required: bool) -> int:
    """A declared size: -1 (unknown) unless ``required``, else 0 to ``MAX_FILE_BYTES``."""
    if size == -1 and not required:
        return size
    if not 0 <= size <= MAX_FILE_BYTES:
        raise InvalidArgument.field(f"files[{path}].size_bytes", f"must be between 0 and {MAX_FILE_BYTES} bytes")
    return size


def check_expires(field: str, expires_s: int) -> int:
    """Lifetime of presigned URLs: 0 means the default of an hour; at most 7 days (S3's limit)."""
    if not 0 <= expires_s <= MAX_EXPIRES_S:
        raise InvalidArgument.field(field, f"must be between 1 and {MAX_EXPIRES_S} seconds (0: 3600)")
    return expires_s or 3600


def _session_key(tenant: str, upload_id: str) -> str:
    return f"tenants/{tenant}/uploads/{upload_id}.json"


def create_upload(store: ObjectStore, tenant: str, files: list[DeclaredFile], part_size: int, known: KnownBlob,
                  expires_s: int = 3600, verified_put_max: int = VERIFIED_PUT_MAX
                  ) -> tuple[UploadSession, dict[str, dict[str, Any]]]:
    """Open an upload session. Returns the session and, per path, what the client must do:
    ``{"present": True}`` (a verified blob holds these bytes), ``{"url": ..., "headers": ...}``
    (one PUT carrying those headers), ``{"parts": {n: url}}`` (multipart), or ``{"stream": True}``
    (no URLs: use UploadArtifact).

    A file with a declared sha256 of at most ``verified_put_max`` bytes gets one PUT that the
    object store verifies against that digest (``ObjectStore.presign_put``): registration then
    only asks the store what it verified. Larger files, and files hashed while they upload, go
    in parallel parts and are read back once at registration. The limit trades one stream's
    speed against the read-back: to SeaweedFS on this machine, one stream kept up with boto3's parts."""
    if not files or len(files) > MAX_FILES:
        raise InvalidArgument.field("files", f"must list 1 to {MAX_FILES} files")
    if not MIN_PART <= part_size <= MAX_PART:
        raise InvalidArgument.field("part_size", f"must be between {MIN_PART} and {MAX_PART} bytes")
    session = UploadSession("u" + uuid.uuid4().hex, tenant, part_size)  # a valid resource id
    plan: dict[str, dict[str, Any]] = {}
    for f in files:
        check_path(f.path)
        if f.digest:  # empty: the client hashes while it uploads and declares it at registration
            check_digest(f.path, f.digest)
        check_size(f.path, f.size, required=True)
        if f.path in plan:
            raise InvalidArgument.field(f"files[{f.path}]", "is listed twice")
        if f.digest and known(f.digest):
            plan[f.path] = {"present": True}
            continue
        key = session.prefix + str(len(session.files))
        entry: dict[str, Any] = {"key": key, "digest": f.digest, "size": f.size, "upload_id": ""}
        checked = (store.presign_put(key, expires_s=expires_s, sha256=f.digest)
                   if f.digest and f.size <= verified_put_max else None)
        if checked is not None:
            # One PUT the store verifies against the declared sha256 itself: nothing to read back.
            url, headers = checked
            entry["store_checked"] = True
            plan[f.path] = {"url": url, "headers": headers}
        elif f.size > part_size:
            upload_id = store.create_multipart(key)
            entry["upload_id"] = upload_id
            count = -(-f.size // part_size)
            urls = {n: store.presign("PUT", key, expires_s=expires_s, upload_id=upload_id, part_number=n)
                    for n in range(1, count + 1)}
            plan[f.path] = {"stream": True} if None in urls.values() else {"parts": urls}
        else:
            # Create-only: once registered, these bytes are the blob; the URL stays valid for
            # ``expires_s`` and must not be able to replace them after verification.
            signed = store.presign_put(key, expires_s=expires_s)
            plan[f.path] = {"url": signed[0], "headers": signed[1]} if signed else {"stream": True}
        session.files[f.path] = entry
    store.put(_session_key(tenant, session.id), blobs.dump({"part_size": part_size, "files": session.files,
                                                            "create_time": time.time()}), if_none_match=True)
    return session, plan


def load_upload(store: ObjectStore, tenant: str, upload_id: str) -> UploadSession:
    if not _UPLOAD_ID.match(upload_id):
        raise InvalidArgument.field("upload", "is not an upload id this server issued")
    doc = blobs.read_json_or_none(store, _session_key(tenant, upload_id))
    if doc is None:
        raise NotFound(f"upload {upload_id} not found (expired or another tenant's)")
    return UploadSession(upload_id, tenant, doc["part_size"], doc["files"])


def write_streamed(store: ObjectStore, session: UploadSession, path: str, data: bytes, offset: int) -> None:
    """Write one chunk of a streamed file (the UploadArtifact path). Chunks arrive in order; the
    file is published when its last byte arrives."""
    entry = session.files.get(path)
    if entry is None:
        raise InvalidArgument.field("path", f"{quote(path)} is not part of upload {session.id} (or is already present)")
    if not 0 <= offset <= entry["size"] or offset + len(data) > entry["size"]:
        raise InvalidArgument.field("offset", f"chunk of {len(data)} bytes at {offset} is outside the file's "
                                              f"{entry['size']} bytes")
    if offset == 0 and len(data) == entry["size"]:
        store.put(entry["key"], data)
        return
    if not entry["upload_id"]:  # small file sent in several chunks: stage the pieces as parts
        raise InvalidArgument.field("chunk", "files up to part_size must be sent in one chunk")
    if offset % session.part_size or (len(data) != session.part_size and offset + len(data) != entry["size"]):
        raise InvalidArgument.field("chunk", f"chunks of {path} must be whole parts of {session.part_size} bytes")
    store.upload_part(entry["key"], entry["upload_id"], offset // session.part_size + 1, data)


def finish_upload(store: ObjectStore, session: UploadSession) -> None:
    """Complete the multipart uploads of a session (idempotent: a finished one is skipped)."""
    for path, entry in session.files.items():
        if not entry["upload_id"] or store.exists(entry["key"]):
            continue
        parts = store.list_parts(entry["key"], entry["upload_id"])
        want = -(-entry["size"] // session.part_size)
        if [p.part_number for p in parts] != list(range(1, want + 1)):
            have = len(parts)
            raise FailedPrecondition(f"upload of {path} is incomplete: {have} of {want} parts received")
        store.complete_multipart(entry["key"], entry["upload_id"], [CompletedPart(p.part_number, p.etag) for p in parts])


def _check_declared(declared: list[DeclaredFile]) -> None:
    if len(declared) > MAX_FILES:
        raise InvalidArgument.field("files", f"at most {MAX_FILES} files per version")
    seen: set[str] = set()
    for f in declared:
        check_path(f.path)
        if f.digest:
            check_digest(f.path, f.digest)
        check_size(f.path, f.size, required=False)
        if f.path in seen:
            raise InvalidArgument.field(f"files[{quote(f.path, 32)}]", "is listed twice")
        seen.add(f.path)


def _verify(store: ObjectStore, key: str, f: DeclaredFile) -> tuple[str, int, int]:
    """(sha256, size, CRC32C) of the stored bytes, checked against what the client declared."""
    digest, size, crc = blobs.digests_of_object(store, key, size=f.size if f.size >= 0 else None)
    if f.digest and f.digest != digest:
        raise InvalidArgument.field(f"files[{f.path}].digest", f"expected {f.digest}, the stored bytes hash to {digest}")
    _check_size(f, size)
    return digest, size, crc


def _check_size(f: DeclaredFile, size: int) -> None:
    if f.size >= 0 and f.size != size:
        raise InvalidArgument.field(f"files[{f.path}].size", f"expected {f.size} bytes, {size} were stored")


def _entry(path: str, digest: str, size: int, key: str, crc32c: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "digest": digest, "size_bytes": size, "object_key": key}
    if crc32c:
        entry["crc32c"] = crc32c
    return entry


def _already(store: ObjectStore, f: DeclaredFile, known: KnownBlob, where: str) -> dict[str, Any]:
    key = known(f.digest) if f.digest else None
    if key is None:
        raise InvalidArgument.field(f"files[{f.path}]", f"is missing: not {where} and not already stored")
    return _entry(f.path, f.digest, store.head(key).size, key)


def collect_from_prefix(store: ObjectStore, tenant: str, source_prefix: str, declared: list[DeclaredFile],
                        known: KnownBlob) -> list[dict[str, Any]]:
    """Files of a version taken from an object prefix (a job's checkpoint): hashed server-side,
    checked against declared digests, copied server-side to content-addressed keys. A declared
    file whose verified bytes are already stored needs no source object."""
    src = source_prefix.rstrip("/") + "/"
    present = {}
    for o in store.iter_all(src):
        present[o.key[len(src):]] = o
        if len(present) > MAX_FILES:
            raise InvalidArgument.field("source_uri", f"holds more than {MAX_FILES} objects; a version has at most "
                                                      f"{MAX_FILES} files")
    wanted = declared or [DeclaredFile(p) for p in sorted(present)]
    if not wanted:
        raise InvalidArgument.field("source_uri", f"no files under {source_prefix!r}")
    _check_declared(wanted)

    def one(f: DeclaredFile) -> dict[str, Any]:
        if f.path not in present:
            return _already(store, f, known, f"under {source_prefix}")
        digest, size, crc = _verify(store, src + f.path, f)
        return _entry(f.path, digest, size, blobs.store_blob_from(store, tenant, src + f.path, digest), crc)

    with ThreadPoolExecutor(max_workers=_VERIFY_THREADS) as pool:
        return sorted(pool.map(one, wanted), key=lambda x: x["path"])


def collect_from_upload(store: ObjectStore, session: UploadSession, declared: list[DeclaredFile],
                        known: KnownBlob) -> list[dict[str, Any]]:
    """Files of a version sent through an upload session: every staged object is verified
    (sha256 and size) and becomes the blob where it lies; files the session skipped because
    their bytes were already stored point at those."""
    if not declared:
        raise InvalidArgument.field("files", "list the uploaded files with their digests")
    _check_declared(declared)

    def one(f: DeclaredFile) -> dict[str, Any]:
        staged = session.files.get(f.path)
        if staged is None:
            return _already(store, f, known, f"in upload {session.id}")
        if not f.digest:
            raise InvalidArgument.field(f"files[{f.path}].digest", "must be given: 'sha256:' and 64 hex digits")
        if (staged["digest"] and staged["digest"] != f.digest) or staged["size"] != f.size:
            raise InvalidArgument.field(f"files[{f.path}]", "digest or size differs from what the upload declared")
        if not store.exists(staged["key"]):
            raise InvalidArgument.field(f"files[{f.path}]", f"was never uploaded to upload {session.id}")
        if staged.get("store_checked") and store.stored_sha256(staged["key"]) == f.digest:
            # The store refused any bytes but these when they were PUT: no read-back. Its CRC32C
            # (for cheap download checks) is taken later, off the client's path (record_crc32c).
            size = store.head(staged["key"]).size
            _check_size(f, size)
            return _entry(f.path, f.digest, size, known(f.digest) or staged["key"])
        digest, size, crc = _verify(store, staged["key"], f)
        return _entry(f.path, digest, size, known(digest) or staged["key"], crc)

    with ThreadPoolExecutor(max_workers=_VERIFY_THREADS) as pool:
        return sorted(pool.map(one, declared), key=lambda x: x["path"])


def discard_upload(store: ObjectStore, session: UploadSession, kept: set[str]) -> None:
    """Remove a session's record and the staged objects no manifest points at (``kept``)."""
    for entry in session.files.values():
        if entry["key"] in kept:
            continue
        if entry["upload_id"] and not store.exists(entry["key"]):
            store.abort_multipart(entry["key"], entry["upload_id"])
        store.delete(entry["key"])
    store.delete(_session_key(session.tenant, session.id))


def crc_key(tenant: str, digest: str) -> str:
    """Where the CRC32C of the tenant's verified bytes with ``digest`` is kept (a function of the
    content, so it never changes: written create-only, never deleted with a version)."""
    return f"tenants/{tenant}/blobs/crc32c/{digest.split(':', 1)[1]}"


def record_crc32c(store: ObjectStore, tenant: str, files: Iterable[dict[str, Any]]) -> int:
    """Read back, once, files that were registered without a CRC32C (bytes the object store
    verified on PUT, or already-stored blobs) and keep their CRC32C under ``crc_key``, so
    downloads can check them cheaply. Runs after registration, off the client's path; reads
    that disagree with the digest are logged and kept out. Returns how many were recorded."""
    done = 0
    for f in files:
        key = crc_key(tenant, f["digest"])
        if store.exists(key):
            continue
        digest, size, crc = blobs.digests_of_object(store, f["object_key"], size=f["size_bytes"])
        if (digest, size) != (f["digest"], f["size_bytes"]):
            log.error("stored bytes of %s hash to %s (%d bytes), not %s: no CRC32C recorded",
                      f["object_key"], digest, size, f["digest"])
            continue
        try:
            store.put(key, str(crc).encode(), if_none_match=True)
            done += 1
        except ObjectExists:
            pass
    return done


def download_plan(store: ObjectStore, tenant: str, files: Iterable[dict[str, Any]], expires_s: int
                  ) -> list[tuple[dict[str, Any], str]]:
    """(file, presigned GET URL or "" when the store has no URLs) for each file. A large file
    registered without a CRC32C gets the one ``record_crc32c`` kept, once there is one (else the
    client checks the sha256)."""
    out = []
    for f in files:
        if "crc32c" not in f and f["size_bytes"] >= CRC_MIN_BYTES:
            try:
                f = {**f, "crc32c": int(store.get(crc_key(tenant, f["digest"])))}
            except ObjectNotFound:
                pass
        out.append((f, store.presign("GET", f["object_key"], expires_s=expires_s) or ""))
    return out
