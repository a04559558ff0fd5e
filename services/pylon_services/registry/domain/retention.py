"""Retention: a deleted version stays a tombstone (its number is never reused, its record stays
readable with ``show_deleted``), and after the retention period its artifact bytes are removed
unless another live version of the tenant uses the same object."""

from __future__ import annotations

import time
from typing import Any

from pylon_services.common import blobs
from pylon_services.registry.domain import layout
from pylon_services.registry.domain.ports import RegistryIndex
from pylon_services.registry.domain.rebuild import tenants
from pylon_services.storage.base import EtagMismatch, ObjectStore


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
            key = layout.meta_key(tenant, model, v["version"])
            meta = layout.read_with_etag(store, key) or {}
            etag = meta.pop("_etag", None)
            try:
                info = store.put(key, blobs.dump({**meta, "purged": True}), if_match=etag) if etag else None
            except EtagMismatch:
                continue  # changed meanwhile; the next round retries
            if info:
                manifest = blobs.read_json(store, layout.version_key(tenant, model, v["version"]))
                index.put_versions(tenant, model, [layout.merge_meta(manifest, {**meta, "purged": True, "_etag": info.etag})])
                counts["versions"] += 1
    return counts
