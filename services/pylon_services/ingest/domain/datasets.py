"""Datasets and their versions on the object store, and the spool for streamed uploads.

Layout under ``tenants/{t}/datasets/{d}/``: ``dataset.json``; ``versions/{n:010d}.json``
(immutable manifests, published by create-only puts, see ``versions.py``); ``processed/{op}/``
(cleaned records and rejects of an operation); ``tokenizations/`` and ``tokenized/``.
Raw bytes live once per tenant under ``tenants/{t}/blobs/sha256/`` (uploading known bytes again
stores nothing new).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from typing import Any

import google_crc32c

from pylon_services.common import blobs
from pylon_services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from pylon_services.storage.base import ObjectExists, ObjectStore


class Spool:
    """Receives an upload chunk by chunk into a temp file, checking CRC32C per chunk and
    hashing as it goes, so no upload is ever held whole in memory."""

    def __init__(self, max_bytes: int) -> None:
        fd, self.path = tempfile.mkstemp(prefix="pylon-upload-")
        self._file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.size = 0
        self._max = max_bytes

    def write(self, data: bytes, crc32c: int, index: int) -> None:
        if google_crc32c.value(data) != crc32c:
            raise InvalidArgument.field(f"chunk[{index}].crc32c", "does not match the chunk's data (corrupted in transit)")
        self.size += len(data)
        if self.size > self._max:
            raise ResourceExhausted(f"upload exceeds {self._max} bytes; use a direct upload session for large files")
        self._sha.update(data)
        self._file.write(data)

    def finish(self) -> str:
        self._file.close()
        return f"sha256:{self._sha.hexdigest()}"

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class Datasets:
    """Reading datasets and versions; creating a dataset's record on its first version."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def prefix(tenant: str, dataset: str) -> str:
        return f"tenants/{tenant}/datasets/{dataset}/"

    def ensure_dataset(self, tenant: str, dataset: str, description: str, creator: str) -> dict[str, Any]:
        key = self.prefix(tenant, dataset) + "dataset.json"
        doc = {"name": f"tenants/{tenant}/datasets/{dataset}", "description": description,
               "create_time": time.time(), "creator": creator}
        try:
            self.store.put(key, blobs.dump(doc), if_none_match=True)
            return doc
        except ObjectExists:
            return blobs.read_json(self.store, key)

    def get_dataset(self, tenant: str, dataset: str) -> dict[str, Any]:
        doc = blobs.read_json_or_none(self.store, self.prefix(tenant, dataset) + "dataset.json")
        if doc is None:
            raise NotFound(f"tenants/{tenant}/datasets/{dataset} not found")
        doc["latest_version"] = blobs.latest_number(self.store, self.prefix(tenant, dataset) + "versions/")
        return doc

    def list_datasets(self, tenant: str, page_size: int, page_token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        out: list[dict[str, Any]] = []
        token = page_token
        while True:
            page = self.store.list(f"tenants/{tenant}/datasets/", page_size=1000, page_token=token)
            for o in page.objects:
                parts = o.key.split("/")
                if len(parts) == 5 and parts[4] == "dataset.json":
                    out.append(self.get_dataset(tenant, parts[3]))
                    if len(out) >= page_size:
                        return out, o.key
            if not page.next_page_token:
                return out, None
            token = page.next_page_token

    def get_version(self, tenant: str, dataset: str, version: str) -> dict[str, Any]:
        doc = blobs.read_numbered(self.store, self.prefix(tenant, dataset) + "versions/", version)
        if doc is None:
            raise NotFound(f"tenants/{tenant}/datasets/{dataset}/versions/{version} not found")
        return doc

    def list_versions(self, tenant: str, dataset: str, page_size: int, page_token: str | None
                      ) -> tuple[list[dict[str, Any]], str | None]:
        self.get_dataset(tenant, dataset)
        return blobs.page_numbered(self.store, self.prefix(tenant, dataset) + "versions/", page_size, page_token,
                                   lambda n: self.get_version(tenant, dataset, str(n)))
