"""Object sources the shard reader reads from: a local directory or an S3 bucket (boto3).

Both offer the two calls the reader needs, ``get(key, start=, end=)`` (a byte range, end
exclusive) and ``list(prefix)``, so a trainer reads shards the same way from a laptop folder,
SeaweedFS, MinIO or AWS S3. ``get`` has the signature of the services' storage port, so a
server-side ``ObjectStore`` can be handed to the reader as it is.
"""

from __future__ import annotations

import os
from typing import Any, Protocol


class ObjectSource(Protocol):
    """What the reader needs from object storage."""

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of object ``key`` (the whole object when both are None)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""
        ...


class LocalSource:
    """Objects are files under ``root``; keys are ``/``-separated relative paths."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    def _path(self, key: str) -> str:
        path = os.path.normpath(os.path.join(self.root, key))
        if not path.startswith(os.path.normpath(self.root) + os.sep):
            raise ValueError(f"key {key!r} escapes the source root")
        return path

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        with open(self._path(key), "rb") as f:
            if start:
                f.seek(start)
            if end is None:
                return f.read()
            return f.read(end - (start or 0))

    def list(self, prefix: str) -> list[str]:
        out = []
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                key = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)


class S3Source:
    """Objects in an S3 bucket (``key`` relative to an optional ``prefix``); ranged GETs, so a
    reader fetches only the windows it needs. ``client`` is a boto3 S3 client; without one, a
    client is made from ``client_kwargs`` (endpoint_url, credentials, region)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, **client_kwargs: Any) -> None:
        if client is None:
            import boto3  # lazy: the SDK does not need boto3 for local sources
            from botocore.config import Config

            # Path-style addressing: MinIO and SeaweedFS have no virtual-host buckets.
            config = Config(s3={"addressing_style": "path"}, max_pool_connections=16,
                            retries={"max_attempts": 5, "mode": "standard"})
            client = boto3.client("s3", config=config, **client_kwargs)
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start is not None or end is not None:
            if end is not None and end <= (start or 0):
                return b""
            kwargs["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        return self.client.get_object(**kwargs)["Body"].read()

    def list(self, prefix: str) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)


class JobDataSource:
    """A job's own data endpoint (``PYLON_DATA_URL``/``PYLON_DATA_TOKEN``, served by its worker):
    the dataset versions its spec names and its job prefix, with no object-store credentials.
    Keys are full object keys (``tenants/{t}/...``). ``pylon.train.data_store()`` makes one."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self._auth = {"Authorization": f"Bearer {token}"}

    def _request(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
                 ) -> bytes:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=data, method=method, headers={**self._auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:200]
            if e.code == 404:
                raise FileNotFoundError(f"{path}: {detail}") from None
            if e.code in (401, 403):
                raise PermissionError(f"{path}: {detail}") from None
            raise OSError(f"{method} {path}: HTTP {e.code}: {detail}") from None

    @staticmethod
    def _path(key: str) -> str:
        from urllib.parse import quote

        return "/v1/objects/" + quote(key, safe="/")

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        headers = {}
        if start is not None or end is not None:
            if end is not None and end <= (start or 0):
                return b""
            headers["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        return self._request("GET", self._path(key), headers=headers)

    def put(self, key: str, data: bytes) -> None:
        """Write an object under the job's ``output/`` or ``checkpoint/`` (others: PermissionError)."""
        self._request("PUT", self._path(key), data=data, headers={"Content-Length": str(len(data))})

    def list(self, prefix: str) -> list[str]:
        import json
        from urllib.parse import urlencode

        keys: list[str] = []
        after = ""
        while True:
            page = json.loads(self._request("GET", "/v1/list?" + urlencode({"prefix": prefix, "after": after})))
            keys.extend(o["key"] for o in page["objects"])
            after = page["next"]
            if not after:
                return keys
