"""Where registry documents live in object storage (the source of truth) and how they are read
without the index (rebuild, engines loading a pinned version).

Under ``tenants/{t}/models/{m}/``:
  model.json                         mutable (description, tags, protected aliases): CAS on etag
  versions/{n:010d}.json             immutable manifest; the create-only put allocates n
  version-meta/{n:010d}.json         mutable state, tags, description of version n: CAS on etag
  aliases/{alias}.json               {version, previous, seq, actor, time}: CAS on etag
  alias-history/{alias}/{seq:010d}.json  one move; rebuilt from the alias document if lost
  deployments/{n}/{deployment}.json  which deployment serves version n
  requests/{request_id}.json         request id -> version number (idempotent registration)
Artifacts are blobs: ``tenants/{t}/blobs/sha256/{hex}`` (copied from a job's output) or
``tenants/{t}/blobs/staged/{upload}/{i}`` (uploaded by the SDK and verified in place); manifests
name each file's digest and object key. ``tenants/{t}/uploads/{id}.json`` records an open upload.
``registry/tenants/{t}`` marks tenants that have models (so a rebuild can find them).
"""

from __future__ import annotations

from typing import Any

from pylon_services.common import blobs
from pylon_services.storage.base import ObjectNotFound, ObjectStore

FORMATS = ("unspecified", "hf_transformers", "safetensors", "torch", "onnx", "other", "pylon_gpt")
STATES = ("ready", "archived", "deleted")
DEFAULT_PROTECTED: tuple[str, ...] = ()  # opt-in per model: UpdateModel(protected_aliases=[...])


def model_prefix(tenant: str, model: str) -> str:
    return f"tenants/{tenant}/models/{model}/"


def model_key(tenant: str, model: str) -> str:
    return model_prefix(tenant, model) + "model.json"


def version_key(tenant: str, model: str, n: int) -> str:
    return model_prefix(tenant, model) + f"versions/{n:010d}.json"


def meta_key(tenant: str, model: str, n: int) -> str:
    return model_prefix(tenant, model) + f"version-meta/{n:010d}.json"


def alias_key(tenant: str, model: str, alias: str) -> str:
    return model_prefix(tenant, model) + f"aliases/{alias}.json"


def history_key(tenant: str, model: str, alias: str, seq: int) -> str:
    return model_prefix(tenant, model) + f"alias-history/{alias}/{seq:010d}.json"


def deployment_key(tenant: str, model: str, n: int, deployment: str) -> str:
    return model_prefix(tenant, model) + f"deployments/{n}/{deployment.replace('/', '~')}.json"


def request_key(tenant: str, model: str, request_id: str) -> str:
    return model_prefix(tenant, model) + f"requests/{request_id}.json"


def tenant_marker(tenant: str) -> str:
    return f"registry/tenants/{tenant}"


def merge_meta(manifest: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
    """A version as users see it: the immutable manifest overlaid with its mutable fields."""
    doc = dict(manifest)
    doc.setdefault("state", "ready")
    doc["update_time"] = doc.get("create_time", 0)
    if meta:
        for k in ("state", "tags", "description", "update_time", "delete_time", "updated_by", "purged"):
            if k in meta:
                doc[k] = meta[k]
        doc["meta_etag"] = meta.get("_etag", "")
    # A version's etag changes whenever its mutable fields do (CAS for UpdateModelVersion).
    doc["etag"] = doc.get("meta_etag") or doc.get("digest", "")[7:39]
    return doc


def read_version(store: ObjectStore, tenant: str, model: str, n: int) -> dict[str, Any] | None:
    """Read one version straight from storage (manifest + mutable fields), or None."""
    manifest = blobs.read_json_or_none(store, version_key(tenant, model, n))
    if manifest is None:
        return None
    return merge_meta(manifest, read_with_etag(store, meta_key(tenant, model, n)))


def read_with_etag(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """A JSON document with its etag under ``_etag`` (None if absent). Head first, then get: if
    it changes in between, the etag is older than the body and a later CAS simply fails."""
    try:
        etag = store.head(key).etag
        return {**blobs.read_json(store, key), "_etag": etag}
    except ObjectNotFound:
        return None
