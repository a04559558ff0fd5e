"""Retention: a deleted version stays a tombstone (its number is never reused, its record stays
readable with ``show_deleted``), and after the retention period its artifact bytes are removed
unless another live version of the tenant uses the same object. Upload sessions a client opened
and never registered are discarded after ``ABANDONED_UPLOAD_S`` (their staged objects and
unfinished multipart uploads with them), like an S3 lifecycle rule for incomplete uploads."""

from __future__ import annotations

import time
from typing import Any

from pylon_services.common import blobs
from pylon_services.common import layout as shared
from pylon_services.registry.domain import artifacts
from pylon_services.registry.domain.ports import RegistryIndex
from pylon_services.registry.domain.rebuild import tenants
from pylon_services.storage.base import EtagMismatch, ObjectStore

ABANDONED_UPLOAD_S = 24 * 3600.0


def _versions(index: RegistryIndex, tenant: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    after = ""
    while models := index.list_models(tenant, after, 1000):
        for m in models:
            name = m["name"].rsplit("/", 1)[1]
            below = None
            while batch := index.scan_versions(tenant, name, below, 1000):
                out += [(name, v) for v in batch]
                below = batch[-1]["version"]
        after = models[-1]["name"].rsplit("/", 1)[1]
    return out


def purge_expired(store: ObjectStore, index: RegistryIndex, retention_s: float, now: float | None = None
                  ) -> dict[str, int]:
    """Delete the artifacts of versions deleted more than ``retention_s`` ago (objects still used
    by a live version are kept) and mark those versions purged."""
    cutoff = (now or time.time()) - retention_s
    counts = {"versions": 0, "objects": 0}
    for tenant in tenants(store):
        versions = _versions(index, tenant)
        expired = [(m, v) for m, v in versions if v["state"] == "deleted" and not v.get("purged")
                   and v.get("delete_time", now or time.time()) <= cutoff]
        if not expired:
            continue
        live = {f["object_key"] for _, v in versions if v["state"] != "deleted" or
                v.get("delete_time", 0) > cutoff for f in v["files"]}
        for model, v in expired:
            for f in v["files"]:
                if f["object_key"] not in live:
                    store.delete(f["object_key"])
                    counts["objects"] += 1
            key = shared.model_meta_key(tenant, model, v["version"])
            meta = blobs.read_json_with_etag(store, key) or {}
            etag = meta.pop("_etag", None)
            try:
                info = store.put(key, blobs.dump({**meta, "purged": True}), if_match=etag) if etag else None
            except EtagMismatch:
                continue  # changed meanwhile; the next round retries
            if info:
                manifest = blobs.read_json(store, shared.model_version_key(tenant, model, v["version"]))
                index.put_versions(tenant, model, [shared.merge_meta(manifest, {**meta, "purged": True, "_etag": info.etag})])
                counts["versions"] += 1
    return counts


def purge_abandoned_uploads(store: ObjectStore, index: RegistryIndex, older_than_s: float = ABANDONED_UPLOAD_S,
                            now: float | None = None) -> int:
    """Discard upload sessions opened more than ``older_than_s`` ago and never registered.
    Objects any version of the tenant points at are kept: a registry that died between writing a
    manifest and closing its session leaves a session whose staged objects are live blobs."""
    cutoff = (now or time.time()) - older_than_s
    discarded = 0
    for tenant in tenants(store):
        prefix = f"tenants/{tenant}/uploads/"
        sessions = [o.key[len(prefix):-len(".json")] for o in store.iter_all(prefix)
                    if o.key.endswith(".json") and "/" not in o.key[len(prefix):]]  # not ingest's staging folders
        old = [s for s in sessions if (blobs.read_json_or_none(store, prefix + s + ".json") or {}).get(
            "create_time", cutoff + 1) <= cutoff]
        if not old:
            continue
        used = {f["object_key"] for _, v in _versions(index, tenant) for f in v["files"]}
        for upload_id in old:
            artifacts.discard_upload(store, artifacts.load_upload(store, tenant, upload_id), used)
            discarded += 1
    return discarded
