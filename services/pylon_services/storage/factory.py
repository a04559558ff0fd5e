"""Open an ``ObjectStore`` from a URL, so settings carry one string (``PYLON_STORE_URL``-style).

``file:///abs/dir`` or a plain path gives the local filesystem store; ``s3://bucket[/prefix]``
gives the S3 store (endpoint and credentials from the arguments, else boto3's usual sources:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). Opening never creates buckets; call
``S3ObjectStore.ensure_bucket`` where that is wanted (e.g. `pylon up`).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from pylon_services.common.errors import InvalidArgument
from pylon_services.storage.base import ObjectStore
from pylon_services.storage.local import LocalObjectStore


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str = "us-east-1",
    public_endpoint_url: str | None = None,
) -> ObjectStore:
    """The store ``url`` names; raises InvalidArgument for an unknown scheme or a bad URL."""
    if not url or not url.strip():
        raise InvalidArgument.field("url", "must not be empty")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not parts.netloc:
            raise InvalidArgument.field("url", "s3 URLs look like s3://bucket[/prefix]")
        # Imported here so that local-only deployments never import boto3.
        from pylon_services.storage.s3 import S3ObjectStore

        return S3ObjectStore(
            parts.netloc,
            prefix=unquote(parts.path).strip("/"),
            endpoint_url=endpoint_url,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            public_endpoint_url=public_endpoint_url,
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument.field("url", "file URLs must be local: file:///absolute/dir")
        path = unquote(parts.path)
        if not os.path.isabs(path):
            raise InvalidArgument.field("url", "file URLs need an absolute path: file:///absolute/dir")
        return LocalObjectStore(path)
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a plain path (or C:\ on Windows)
        return LocalObjectStore(os.path.abspath(os.path.expanduser(url)))
    raise InvalidArgument.field("url", f"unsupported scheme {parts.scheme!r} (use file:// or s3://)")
