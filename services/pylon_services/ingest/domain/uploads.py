"""Upload sessions: a direct-to-object-storage multipart upload, resumable, verified at commit.

How the digests are checked without the service re-reading the file:

* At ``CreateUploadSession`` the client declares the file's size, sha256 and (optionally) the
  MD5 of every part; or it sends the part MD5s with the commit, having hashed each part while
  sending it (no second pass over the file before the upload; same check at commit). The
  object store computes each part's ETag as the MD5 of the bytes it actually received, so at
  commit ``check_parts`` compares stored ETags with the declared MD5s (and the completed
  object's size with the declared size): a corrupted or truncated part is rejected at commit,
  before anything is published, and costs one ListParts call.
* The whole-file sha256 is checked in the processing pass that reads the file anyway (the Ray
  task hashes the stream while validating it). The bytes sit in a per-session staging key until
  that check passes; only then are they copied (server-side) to their content address and the
  version published. A mismatch fails the operation and leaves nothing visible.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pylon_services.common.errors import InvalidArgument
from pylon_services.storage.base import CompletedPart

MIN_PART = 5 << 20  # S3's minimum for every part but the last
MAX_PART = 5 << 30
MAX_PARTS = 10_000
DEFAULT_PART = 16 << 20
SESSION_TTL_S = 7 * 24 * 3600
OPEN, COMMITTED, ABORTED = "open", "committed", "aborted"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SHA = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass
class UploadSession:
    """An open multipart upload of one file into a dataset."""

    id: str
    tenant: str
    dataset: str
    path: str
    format: str
    compression: str
    digest: str
    size: int
    part_size: int
    part_md5s: list[str]
    staging_key: str
    upload_id: str  # "" when the bytes are already stored (nothing to upload)
    already_stored: bool
    processing: dict[str, Any]
    description: str = ""
    creator: str = ""
    state: str = OPEN
    operation: str = ""
    create_time: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/uploadSessions/{self.id}"

    @property
    def part_count(self) -> int:
        return part_count(self.size, self.part_size)

    @property
    def expire_time(self) -> float:
        return self.create_time + SESSION_TTL_S

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UploadSession:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def part_count(size: int, part_size: int) -> int:
    """Parts needed for ``size`` bytes (an empty file is one empty part)."""
    return max(1, -(-size // part_size))


def check_plan(size: int, digest: str, part_size: int, part_md5s: list[str]) -> int:
    """Validate a session request; returns the part size to use."""
    if not _SHA.match(digest or ""):
        raise InvalidArgument.field("header.digest", "direct uploads need the file's 'sha256:<64 hex>' digest")
    if size < 0:
        raise InvalidArgument.field("header.size_bytes", "must not be negative")
    part_size = part_size or DEFAULT_PART
    if not MIN_PART <= part_size <= MAX_PART:
        raise InvalidArgument.field("part_size_bytes", f"must be between {MIN_PART} and {MAX_PART} bytes")
    n = part_count(size, part_size)
    if n > MAX_PARTS:
        raise InvalidArgument.field("part_size_bytes", f"{size} bytes in parts of {part_size} is {n} parts; "
                                    f"at most {MAX_PARTS}: use larger parts")
    check_md5s("part_md5s", part_md5s, n)
    return part_size


def check_md5s(field: str, part_md5s: list[str], n: int) -> None:
    """Declared part MD5s: one per part, 32 lowercase hex digits each."""
    if part_md5s and len(part_md5s) != n:
        raise InvalidArgument.field(field, f"{len(part_md5s)} given, the file has {n} parts")
    for i, md5 in enumerate(part_md5s):
        if not _MD5.match(md5):
            raise InvalidArgument.field(f"{field}[{i}]", "must be 32 lowercase hex digits")


def commit_md5s(session: UploadSession, part_md5s: list[str]) -> None:
    """Take the part MD5s a client sends with the commit (it hashed each part while sending it)
    into ``session``; they must agree with any declared when the session was opened."""
    if not part_md5s:
        return
    check_md5s("part_md5s", part_md5s, session.part_count)
    if session.part_md5s and session.part_md5s != part_md5s:
        bad = next(i for i, (a, b) in enumerate(zip(session.part_md5s, part_md5s, strict=True)) if a != b)
        raise InvalidArgument.field(f"part_md5s[{bad}]", "differs from the MD5 declared when the session was opened")
    session.part_md5s = list(part_md5s)


def check_parts(session: UploadSession, stored: list[CompletedPart]) -> list[CompletedPart]:
    """The parts to complete the upload with, in order; raises when any is missing or does not
    match the MD5 the client declared (corrupted or truncated in transit)."""
    by_number = {p.part_number: p for p in stored}
    n = session.part_count
    missing = [i for i in range(1, n + 1) if i not in by_number]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise InvalidArgument.field("parts", f"{len(missing)} of {n} parts not uploaded yet: {shown}")
    extra = sorted(set(by_number) - set(range(1, n + 1)))
    if extra:
        raise InvalidArgument.field("parts", f"parts {extra} are beyond the declared size of {session.size} bytes")
    for i, md5 in enumerate(session.part_md5s, start=1):
        got = by_number[i].etag.strip('"').lower()
        if got != md5:
            raise InvalidArgument.field(f"parts[{i}]", f"stored bytes have MD5 {got}, the client declared {md5}: "
                                        "the part was corrupted or truncated in transit; upload it again")
    return [by_number[i] for i in range(1, n + 1)]


def check_size(session: UploadSession, stored_size: int) -> None:
    """After completing: the object must have exactly the declared size."""
    if stored_size != session.size:
        raise InvalidArgument.field("header.size_bytes", f"declared {session.size} bytes, the parts add up to "
                                    f"{stored_size}: truncated or padded upload")
