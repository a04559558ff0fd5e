"""Datasets and their versions on the object store, and the spool for streamed uploads.

Layout under ``tenants/{t}/datasets/{d}/``: ``dataset.json``, ``versions/{n:010d}.json``
(immutable manifests, published by create-only puts, see ``versions.py``) and
``tokenizations/`` are read by other services too, so their keys live in
``pylon_services.common.layout``; ``processed/{op}/`` (cleaned records and rejects of an
operation) and ``tokenized/`` (shards, found through a tokenization's manifest) are ingest's own.
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

from pylon_services.common import blobs, deadline, layout, paging
from pylon_services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from pylon_services.common.limits import check_description, check_labels, check_request_id
from pylon_services.common.names import check_id
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


MAX_LOOKED_AT = 10_000  # store keys one page of datasets may look at


class Datasets:
    """Datasets and versions on the object store: created explicitly (``create_dataset``) or
    with their first version (``ensure_dataset``), soft-deleted (``delete_dataset``).

    A deleted dataset keeps its ``dataset.json`` with a ``delete_time`` and every object it
    references: the API no longer shows it or its versions and refuses new versions, but jobs
    and models that already reference a version (by its objects and digest) keep working, and
    the name is never given to a new dataset (a version name in lineage stays unambiguous).
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _doc(self, tenant: str, dataset: str) -> dict[str, Any] | None:
        """dataset.json with its store etag under ``_etag`` (for a compare-and-swap write)."""
        return blobs.read_json_with_etag(self.store, layout.dataset_key(tenant, dataset))

    def create_dataset(self, tenant: str, dataset: str, description: str, labels: dict[str, str], creator: str,
                       request_id: str) -> dict[str, Any]:
        """Create an empty dataset; the same ``request_id`` again returns it (a retried create)."""
        check_id("dataset_id", dataset)
        check_description("description", description)
        check_request_id("request_id", request_id)
        doc = {"name": f"tenants/{tenant}/datasets/{dataset}", "description": description,
               "labels": check_labels("labels", labels), "create_time": time.time(), "creator": creator,
               "request_id": request_id}
        try:
            self.store.put(layout.dataset_key(tenant, dataset), blobs.dump(doc), if_none_match=True)
        except ObjectExists:
            found = self._doc(tenant, dataset) or {}
            if found.get("delete_time"):
                raise AlreadyExists(f"{doc['name']} was deleted; dataset names are not reused, so that version "
                                    "names in lineage stay unambiguous. Choose another name") from None
            if request_id and found.get("request_id") == request_id:
                return self.get_dataset(tenant, dataset)
            raise AlreadyExists(f"{doc['name']} already exists") from None
        return self.get_dataset(tenant, dataset)

    def ensure_dataset(self, tenant: str, dataset: str, description: str, creator: str) -> dict[str, Any]:
        """The dataset's record, created with its first version; FAILED_PRECONDITION when it was
        deleted (while its upload was being processed, say)."""
        key = layout.dataset_key(tenant, dataset)
        doc = {"name": f"tenants/{tenant}/datasets/{dataset}", "description": description,
               "create_time": time.time(), "creator": creator}
        try:
            self.store.put(key, blobs.dump(doc), if_none_match=True)
            return doc
        except ObjectExists:
            found = blobs.read_json(self.store, key)
        if found.get("delete_time"):
            raise FailedPrecondition(f"{doc['name']} was deleted; it takes no new versions")
        return found

    def check_writable(self, tenant: str, dataset: str) -> None:
        """Refuse new versions of a deleted dataset (before any bytes are sent)."""
        found = blobs.read_json_or_none(self.store, layout.dataset_key(tenant, dataset))
        if found and found.get("delete_time"):
            raise FailedPrecondition(f"tenants/{tenant}/datasets/{dataset} was deleted; it takes no new versions "
                                     "(its name is not reused either: upload under another name)")

    def delete_dataset(self, tenant: str, dataset: str, etag: str) -> dict[str, Any]:
        """Soft delete (see the class docstring); ``etag``, when given, must be the current one
        (ABORTED otherwise). A deleted or missing dataset is NOT_FOUND, so a repeated delete is too."""
        doc = self._doc(tenant, dataset)
        if doc is None or doc.get("delete_time"):
            raise NotFound(f"tenants/{tenant}/datasets/{dataset} not found")
        current = doc.pop("_etag")
        if etag and etag != current:
            raise Aborted(f"{doc['name']} changed since etag {etag} (now {current}); re-read it and retry")
        doc["delete_time"] = time.time()
        self.store.put(layout.dataset_key(tenant, dataset), blobs.dump(doc), if_match=current)
        return doc

    def get_dataset(self, tenant: str, dataset: str) -> dict[str, Any]:
        doc = self._doc(tenant, dataset)
        if doc is None or doc.get("delete_time"):
            raise NotFound(f"tenants/{tenant}/datasets/{dataset} not found")
        doc["latest_version"] = blobs.latest_number(self.store, layout.dataset_versions_prefix(tenant, dataset))
        return doc

    def list_datasets(self, tenant: str, page_size: int, page_token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Datasets in name order. The token holds the last store key looked at, which must lie
        under this tenant's datasets; a page looks at most ``MAX_LOOKED_AT`` keys (deleted
        datasets and their objects are skipped) and stops at the call's deadline."""
        prefix = layout.datasets_prefix(tenant)
        token = paging.decode_str_token(page_token or "", "datasets", tenant)
        if token is not None and not token.startswith(prefix):
            raise InvalidArgument.field("page_token", "is not a page token this server issued for this list")
        out: list[dict[str, Any]] = []
        budget, looked = paging.PageBudget(), 0
        while looked < MAX_LOOKED_AT:
            deadline.check("listing datasets")
            page = self.store.list(prefix, page_size=1000, page_token=token)
            for o in page.objects:
                looked += 1
                parts = o.key.split("/")
                if len(parts) == 5 and o.key == layout.dataset_key(tenant, parts[3]):
                    try:
                        doc = self.get_dataset(tenant, parts[3])
                    except NotFound:
                        token = o.key
                        continue  # deleted
                    if not budget.take(doc):
                        return out, paging.encode_token("datasets", token or prefix, tenant)
                    out.append(doc)
                token = o.key
                if len(out) >= page_size:
                    return out, paging.encode_token("datasets", token, tenant)
            if not page.next_page_token:
                return out, None
        return out, paging.encode_token("datasets", token or prefix, tenant)

    def visible_version(self, tenant: str, dataset: str, version: str) -> dict[str, Any]:
        """A version as the API shows it: NOT_FOUND once its dataset was deleted."""
        found = blobs.read_json_or_none(self.store, layout.dataset_key(tenant, dataset))
        if found and found.get("delete_time"):
            raise NotFound(f"tenants/{tenant}/datasets/{dataset}/versions/{version} not found (dataset deleted)")
        return self.get_version(tenant, dataset, version)

    def get_version(self, tenant: str, dataset: str, version: str) -> dict[str, Any]:
        """A version whether or not its dataset was deleted (``common.layout.read_dataset_version``)."""
        return layout.read_dataset_version(self.store, tenant, dataset, version)

    def list_versions(self, tenant: str, dataset: str, page_size: int, page_token: str | None
                      ) -> tuple[list[dict[str, Any]], str | None]:
        self.get_dataset(tenant, dataset)
        return blobs.page_numbered(self.store, layout.dataset_versions_prefix(tenant, dataset), page_size, page_token,
                                   lambda n: blobs.read_json_or_none(self.store,
                                                                     layout.dataset_version_key(tenant, dataset, n)))
