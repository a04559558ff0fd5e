"""The one rule for file paths users name: model artifact paths (registry) and dataset file
names (ingest), on every upload path (presigned, streamed, imported, registered from a prefix).

Why one rule: a path is stored in a manifest and later written to a client's disk by the SDK's
download, so a path one upload path accepts and another refuses (or that no filesystem can
create, such as one with a NUL) makes a version that can be registered but never downloaded.
"""

from __future__ import annotations

import re

from pylon_services.common.errors import InvalidArgument
from pylon_services.common.limits import quote

MAX_PATH_BYTES = 1024  # UTF-8 bytes of a whole path (S3 keys are at most 1024 bytes too)
MAX_SEGMENT_BYTES = 255  # UTF-8 bytes of one name (NAME_MAX on Linux and macOS)
# Controls (C0, DEL, C1), lone surrogates, and the Unicode line and paragraph separators.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
PATH_RULE = (f"must be a relative path of at most {MAX_PATH_BYTES} bytes: '/'-separated names of 1-"
             f"{MAX_SEGMENT_BYTES} bytes, none of them '.' or '..', no leading or trailing '/', no '\\', "
             "no control characters")
NAME_RULE = (f"must be a plain file name of 1-{MAX_SEGMENT_BYTES} bytes: no '/' or '\\', not '.' or '..', "
             "not starting with '.', no control characters")


def check_path(field: str, path: str, *, nested: bool = True) -> str:
    """``path`` if it obeys the rule, else InvalidArgument naming ``field``. ``nested=False``
    allows one name only (dataset files), which must not start with '.' either (no hidden
    files, and nothing a shell glob skips)."""
    rule = PATH_RULE if nested else NAME_RULE
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidArgument.field(field, f"{quote(path, 32)} {rule}")
    if "\\" in path or _FORBIDDEN.search(path):
        raise InvalidArgument.field(field, f"{quote(path, 32)} {rule}")
    segments = path.split("/")
    if not nested and (len(segments) != 1 or path.startswith(".")):
        raise InvalidArgument.field(field, f"{quote(path, 32)} {rule}")
    for s in segments:
        if s in ("", ".", "..") or len(s.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidArgument.field(field, f"{quote(path, 32)} {rule}")
    return path


def check_prefix(field: str, prefix: str) -> str:
    """An object-store prefix a request names (``tenants/acme/jobs/j1/output/``): the path rule
    with an optional trailing '/', so it can never climb out of where it points ('..')."""
    check_path(field, prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix
