"""Dataset version manifests: build one from processed files, publish it with one create-only write.

A version is visible exactly when its manifest ``versions/{n:010d}.json`` exists; everything it
references (raw blobs, cleaned output, rejects) is written before, under keys nobody lists, so a
failed or interrupted operation never leaves a half-visible version. The manifest names the
operation that made it, so a resumed operation can tell whether its predecessor got as far as
publishing (``find_published``) and never publishes twice.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pylon_services.common import blobs, layout
from pylon_services.common.errors import AlreadyExists
from pylon_services.storage.base import ObjectExists, ObjectStore

_SCAN_BACK = 50  # versions a resumed operation looks back through for its own manifest


def work_prefix(tenant: str, dataset: str, op_id: str) -> str:
    """Where an operation writes cleaned output and rejects before publishing (never listed)."""
    return layout.dataset_prefix(tenant, dataset) + f"processed/{op_id}/"


def shards_prefix(tenant: str, dataset: str, n: int, tokenizer: str) -> str:
    """Where a tokenization of version ``n`` writes its shards; readers find it in the
    tokenization's manifest (``shard_prefix``), never by computing it."""
    return layout.dataset_prefix(tenant, dataset) + f"tokenized/{n:010d}/{tokenizer}/"


def cleaning_steps(recipe: dict[str, Any]) -> list[str]:
    """The recipe as the ordered list of steps the manifest records."""
    steps = []
    if recipe.get("normalize_unicode"):
        steps.append(f"normalize_unicode:{recipe['normalize_unicode']}")
    if recipe.get("normalize_whitespace"):
        steps.append("normalize_whitespace")
    steps.append(f"length:{recipe.get('min_chars', 1)}..{recipe.get('max_chars', 1_000_000)}")
    for flag in ("dedupe", "scrub_email", "scrub_phone"):
        if recipe.get(flag):
            steps.append(flag)
    return steps


def version_digest(files: list[dict[str, Any]], processed: list[dict[str, Any]], recipe: dict[str, Any]) -> str:
    """Identity of a version in lineage: raw files, cleaned files and the recipe."""
    h = hashlib.sha256(blobs.manifest_digest(files + processed).encode())
    h.update(blobs.dump(recipe))
    return f"sha256:{h.hexdigest()}"


def build_manifest(tenant: str, dataset: str, op: dict[str, Any], results: list[dict[str, Any]],
                   merged: dict[str, Any]) -> Any:
    """``doc_for(n)``: the manifest of version n from the per-file results of operation ``op``."""
    spec = op["spec"]
    recipe = spec["processing"]["recipe"]
    files, processed, rejects = [], [], []
    for r in sorted(results, key=lambda r: r["index"]):
        f = spec["files"][r["index"]]
        files.append({"path": f["path"], "digest": r["digest"], "size_bytes": r["size"], "format": f["format"],
                      "compression": f["compression"], "record_count": r["summary"]["records_in"],
                      "object_key": r["object_key"]})
        processed.append({"path": f["path"] + ".clean.jsonl", "digest": r["out"]["digest"],
                          "size_bytes": r["out"]["size"], "format": "jsonl", "compression": "",
                          "record_count": r["summary"]["records_out"], "object_key": r["out"]["key"]})
        rejects.append({"path": f["path"] + ".rejects.jsonl", "digest": r["rejects"]["digest"],
                        "size_bytes": r["rejects"]["size"], "format": "jsonl", "compression": "",
                        "record_count": r["summary"]["rejected"], "object_key": r["rejects"]["key"]})
    digest = version_digest(files, processed, recipe)
    now = time.time()

    def doc_for(n: int) -> dict[str, Any]:
        return {"name": f"tenants/{tenant}/datasets/{dataset}/versions/{n}", "version": n, "state": "ready",
                "files": files, "processed_files": processed, "reject_files": rejects, "digest": digest,
                "record_count": merged["records_out"], "records_in": merged["records_in"],
                "reject_count": merged["rejected"], "dropped": merged.get("dropped", {}),
                "size_bytes": sum(f["size_bytes"] for f in files), "schema": merged.get("schema", {}),
                "profile": merged.get("profile", {}), "recipe": recipe, "cleaning": cleaning_steps(recipe),
                "parent": spec.get("parent", ""), "source": spec.get("source", ""),
                "creator": spec.get("creator", ""), "create_time": now, "operation": op["id"]}
    return doc_for


def publish(store: ObjectStore, tenant: str, dataset: str, doc_for: Any, exact: int = 0) -> tuple[int, dict[str, Any]]:
    """Write the manifest create-only: the next free number, or exactly ``exact`` (the loser of
    two commits racing for the same number gets ALREADY_EXISTS)."""
    prefix = layout.dataset_versions_prefix(tenant, dataset)
    if not exact:
        return blobs.allocate_numbered(store, prefix, doc_for)
    doc = doc_for(exact)
    try:
        store.put(layout.dataset_version_key(tenant, dataset, exact), blobs.dump(doc), if_none_match=True)
    except ObjectExists:
        raise AlreadyExists(f"tenants/{tenant}/datasets/{dataset}/versions/{exact} already exists "
                            "(another commit published it first)") from None
    if exact >= blobs.latest_number(store, prefix):
        blobs.note_latest(store, prefix, exact)
    return exact, doc


def version_exists(store: ObjectStore, tenant: str, dataset: str, n: int) -> bool:
    return store.exists(layout.dataset_version_key(tenant, dataset, n))


def reuse_key(tenant: str, digest: str, f: dict[str, Any], processing: dict[str, Any]) -> str:
    """Where the outputs of processing the bytes ``digest`` this exact way are remembered."""
    how = {"digest": digest, "format": f["format"], "compression": f["compression"],
           "schema": processing.get("schema"), "recipe": processing["recipe"]}
    return f"tenants/{tenant}/processed-index/{hashlib.sha256(blobs.dump(how)).hexdigest()}.json"


def reusable(f: dict[str, Any]) -> bool:
    """Only bytes already verified and owned (not staging, not referenced) may reuse outputs."""
    return bool(f.get("digest")) and not f.get("staging") and not f.get("by_reference")


def find_published(store: ObjectStore, tenant: str, dataset: str, op_id: str) -> dict[str, Any] | None:
    """The manifest operation ``op_id`` already published, if it got that far before a crash."""
    n = blobs.latest_number(store, layout.dataset_versions_prefix(tenant, dataset))
    for k in range(n, max(0, n - _SCAN_BACK), -1):
        doc = blobs.read_json_or_none(store, layout.dataset_version_key(tenant, dataset, k))
        if doc and doc.get("operation") == op_id:
            return doc
    return None
