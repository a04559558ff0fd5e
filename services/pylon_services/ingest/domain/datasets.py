"""Dataset use cases: spool an upload, verify it, store it content-addressed, publish a version.

Layout under ``tenants/{t}/datasets/{d}/``: ``dataset.json``; ``versions/{n:010d}.json``
(immutable manifests, numbers allocated by create-only puts); ``requests/{id}.json``.
Bytes live once per tenant under ``tenants/{t}/blobs/sha256/`` (uploading known bytes again
stores nothing new).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import google_crc32c

from pylon_services.common import blobs
from pylon_services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from pylon_services.common.names import check_id
from pylon_services.storage.base import ObjectExists, ObjectStore

FORMATS = ("unspecified", "text", "jsonl", "csv", "parquet")
SUPPORTED_NOW = ("text", "jsonl")


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


@dataclass
class UploadRequest:
    tenant: str
    dataset: str
    path: str
    format: str
    digest: str
    size_bytes: int
    description: str
    request_id: str
    creator: str


def count_records(path: str, fmt: str) -> int:
    """Check the file parses as ``fmt`` and count its records (lines); streamed."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    count = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = decoder.decode(raw)
            except UnicodeDecodeError as e:
                raise InvalidArgument.field("data", f"line {lineno} is not valid UTF-8: {e.reason}") from e
            if not line.strip():
                continue
            if fmt == "jsonl":
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidArgument.field("data", f"line {lineno} is not valid JSON: {e.msg}") from e
            count += 1
    return count


class Datasets:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def prefix(tenant: str, dataset: str) -> str:
        return f"tenants/{tenant}/datasets/{dataset}/"

    def validate_upload(self, req: UploadRequest) -> None:
        check_id("header.dataset", req.dataset)
        if not req.path or "/" in req.path or req.path.startswith("."):
            raise InvalidArgument.field("header.path", "must be a plain file name")
        if req.format not in SUPPORTED_NOW:
            raise InvalidArgument.field("header.format", f"must be one of {', '.join(SUPPORTED_NOW)} in this release")
        if req.digest and not (req.digest.startswith("sha256:") and len(req.digest) == 71):
            raise InvalidArgument.field("header.digest", "must be 'sha256:' followed by 64 hex digits")

    def ensure_dataset(self, tenant: str, dataset: str, description: str, creator: str) -> dict[str, Any]:
        key = self.prefix(tenant, dataset) + "dataset.json"
        doc = {"name": f"tenants/{tenant}/datasets/{dataset}", "description": description,
               "create_time": time.time(), "creator": creator}
        try:
            self.store.put(key, blobs.dump(doc), if_none_match=True)
            return doc
        except ObjectExists:
            return blobs.read_json(self.store, key)

    def previous(self, req: UploadRequest) -> dict[str, Any] | None:
        """The version an earlier call with the same request_id created, if any."""
        if not req.request_id:
            return None
        done = blobs.read_json_or_none(self.store, self.prefix(req.tenant, req.dataset) + f"requests/{req.request_id}.json")
        return self.get_version(req.tenant, req.dataset, str(done["version"])) if done else None

    def commit(self, req: UploadRequest, spool_path: str, digest: str, size: int) -> tuple[dict[str, Any], bool]:
        """Verify, store the bytes once, and publish the version with one create-only write."""
        if req.digest and req.digest != digest:
            raise InvalidArgument.field("header.digest", f"expected {req.digest}, received bytes hash to {digest}")
        if req.size_bytes and req.size_bytes != size:
            raise InvalidArgument.field("header.size_bytes", f"expected {req.size_bytes} bytes, received {size}")
        records = count_records(spool_path, req.format)
        key = blobs.blob_key(req.tenant, digest)
        dedup = self.store.exists(key)
        if not dedup:
            self.store.put_file(key, spool_path)
        self.ensure_dataset(req.tenant, req.dataset, req.description, req.creator)
        files = [{"path": req.path, "digest": digest, "size_bytes": size, "format": req.format,
                  "record_count": records, "object_key": key}]
        now = time.time()

        def doc_for(n: int) -> dict[str, Any]:
            return {"name": f"tenants/{req.tenant}/datasets/{req.dataset}/versions/{n}", "version": n,
                    "state": "ready", "files": files, "digest": blobs.manifest_digest(files),
                    "record_count": records, "size_bytes": size, "source": "upload:grpc",
                    "creator": req.creator, "create_time": now, "cleaning": [], "parent": ""}

        prefix = self.prefix(req.tenant, req.dataset)
        n, doc = blobs.allocate_numbered(self.store, prefix + "versions/", doc_for)
        if req.request_id:
            try:
                self.store.put(prefix + f"requests/{req.request_id}.json", blobs.dump({"version": n}), if_none_match=True)
            except ObjectExists:
                pass
        return doc, dedup

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
