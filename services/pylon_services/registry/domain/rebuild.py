"""Rebuild the registry index from object storage (the source of truth).

``sync_model`` re-reads one model (used after a failed or interrupted write); ``rebuild_all``
walks every tenant's models (``pylon admin reindex``, and at start when the index is empty).
Reads run on a small thread pool: the store is network-bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pylon_services.common import blobs
from pylon_services.common import layout as shared
from pylon_services.registry.domain import layout
from pylon_services.registry.domain.ports import RegistryIndex
from pylon_services.storage.base import ObjectStore

log = logging.getLogger("pylon.registry.rebuild")
_THREADS = 16


def _parallel(fn: Callable[[str], Any], keys: list[str]) -> list[Any]:
    if len(keys) < 4:
        return [fn(k) for k in keys]
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        return list(pool.map(fn, keys))


def sync_model(store: ObjectStore, index: RegistryIndex, tenant: str, model: str) -> int:
    """Make the index's entries for one model equal to what storage holds; returns its version count."""
    model_doc = blobs.read_json_with_etag(store, layout.model_key(tenant, model))
    if model_doc is None:
        index.drop_model(tenant, model)
        return 0
    prefix = shared.model_prefix(tenant, model)
    versions, meta = shared.model_versions_prefix(tenant, model), shared.model_meta_prefix(tenant, model)
    manifests: list[str] = []
    metas: dict[int, str] = {}
    aliases: list[str] = []
    deployments: dict[int, list[str]] = {}
    for o in store.iter_all(prefix):
        rel = o.key[len(prefix):]
        if o.key.startswith(versions) and o.key[len(versions):-5].isdigit():
            manifests.append(o.key)
        elif o.key.startswith(meta):
            metas[int(o.key[len(meta):-5])] = o.key
        elif rel.startswith("aliases/"):
            aliases.append(o.key)
        elif rel.startswith("deployments/"):
            n, _, dep = rel[12:].partition("/")
            deployments.setdefault(int(n), []).append(dep[:-5].replace("~", "/"))
    meta_docs = dict(zip(metas, _parallel(lambda k: blobs.read_json_with_etag(store, k), list(metas.values())), strict=True))
    docs = []
    for manifest in _parallel(lambda k: blobs.read_json(store, k), manifests):
        docs.append(shared.merge_meta(manifest, meta_docs.get(manifest["version"])))
    # Overwrite in place (never drop first): readers keep seeing a complete model meanwhile.
    etag = model_doc.pop("_etag")
    index.put_model(tenant, model, {**model_doc, "etag": etag})
    for i in range(0, len(docs), 1000):
        index.put_versions(tenant, model, docs[i:i + 1000])
    alias_docs = {}
    for key, doc in zip(aliases, _parallel(lambda k: blobs.read_json_with_etag(store, k), aliases), strict=True):
        if doc and doc.get("version"):
            alias_docs[key.rsplit("/", 1)[1][:-5]] = {**doc, "etag": doc.pop("_etag")}
    index.replace_aliases(tenant, model, alias_docs)
    index.replace_deployments(tenant, model, deployments)
    for d in docs:
        if d.get("request_id"):
            index.put_request(tenant, model, d["request_id"], d["version"])
    index.put_blobs(tenant, {f["digest"]: f["object_key"] for d in docs if not d.get("purged") for f in d["files"]})
    return len(docs)


def tenants(store: ObjectStore) -> list[str]:
    return [o.key.rsplit("/", 1)[1] for o in store.iter_all("registry/tenants/")]


def models_in_storage(store: ObjectStore, tenant: str) -> list[str]:
    prefix = f"tenants/{tenant}/models/"
    return sorted({o.key[len(prefix):].split("/", 1)[0] for o in store.iter_all(prefix)
                   if o.key.endswith("/model.json") and o.key.count("/") == 4})


def rebuild_all(store: ObjectStore, index: RegistryIndex) -> dict[str, int]:
    """Resync every model of every tenant and drop index entries storage no longer has."""
    counts = {"tenants": 0, "models": 0, "versions": 0, "dropped": 0}
    for tenant in tenants(store):
        counts["tenants"] += 1
        stored = models_in_storage(store, tenant)
        for model in stored:
            counts["versions"] += sync_model(store, index, tenant, model)
            counts["models"] += 1
        after = ""
        while batch := index.list_models(tenant, after, 1000):
            for doc in batch:
                name = doc["name"].rsplit("/", 1)[1]
                if name not in stored:
                    index.drop_model(tenant, name)
                    counts["dropped"] += 1
            after = batch[-1]["name"].rsplit("/", 1)[1]
    index.mark_built()
    log.info("registry index rebuilt: %s", counts)
    return counts


def repair(store: ObjectStore, index: RegistryIndex, older_than_s: float) -> list[tuple[str, str]]:
    """Resync models whose writers left a write-ahead marker (they crashed mid-write)."""
    fixed = index.stale(older_than_s)
    for tenant, model in fixed:
        sync_model(store, index, tenant, model)
        log.warning("resynced %s/%s after an interrupted write", tenant, model)
    return fixed
