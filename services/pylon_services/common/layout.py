"""The object-store layout other services rely on: keys and readers of the manifests that one
service writes and others read straight from the store.

Ingest writes datasets and tokenizations, the registry writes model versions; the scheduler's
workers, the trainers and the engines read them without calling those services (a running job
must not depend on a service being up, and the manifests are immutable). This module is that
contract: the keys exist here once, the owning service writes through them, and readers use the
``read_*`` functions. Everything else each service stores (sessions, operations, aliases,
processed output, ...) stays private to that service.

Under ``tenants/{t}/datasets/{d}/`` (written by ingest):
  dataset.json                               the dataset record; ``delete_time`` once soft-deleted
  versions/{n:010d}.json                     immutable version manifest (files with object keys,
                                             processed_files, digest, ...); create-only put
  tokenizations/{n:010d}/{tokenizer}.json    immutable tokenization manifest of version n
                                             (``shard_prefix``, ``index_object_key``, ...)

Under ``tenants/{t}/models/{m}/`` (written by the registry):
  versions/{n:010d}.json                     immutable version manifest (files, lineage, ...)
  version-meta/{n:010d}.json                 mutable state, tags, description of version n

A soft-deleted dataset keeps every object, and the readers here do not look at its
``delete_time``: jobs and models that already reference a version keep working (only the ingest
API hides deleted datasets). Likewise a model version's manifest stays readable whatever its state;
``read_model_version`` returns the state, and the caller decides.
"""

from __future__ import annotations

from typing import Any

from pylon_services.common import blobs
from pylon_services.common.errors import InvalidArgument, NotFound
from pylon_services.common.limits import quote
from pylon_services.common.names import is_version_number
from pylon_services.storage.base import ObjectStore

# -- datasets (ingest) -------------------------------------------------------------------------


def dataset_prefix(tenant: str, dataset: str) -> str:
    """Everything of one dataset lives under this prefix."""
    return f"tenants/{tenant}/datasets/{dataset}/"


def datasets_prefix(tenant: str) -> str:
    """Every dataset of a tenant lives under this prefix."""
    return f"tenants/{tenant}/datasets/"


def dataset_key(tenant: str, dataset: str) -> str:
    """The dataset record (description, labels, ``delete_time``)."""
    return dataset_prefix(tenant, dataset) + "dataset.json"


def dataset_versions_prefix(tenant: str, dataset: str) -> str:
    """Where version manifests are numbered (``blobs.allocate_numbered`` allocates them)."""
    return dataset_prefix(tenant, dataset) + "versions/"


def dataset_version_key(tenant: str, dataset: str, n: int) -> str:
    return blobs.numbered_key(dataset_versions_prefix(tenant, dataset), n)


def tokenization_key(tenant: str, dataset: str, n: int, tokenizer: str) -> str:
    """The manifest of tokenizing version ``n`` with ``tokenizer`` (its id, not a resource name)."""
    return dataset_prefix(tenant, dataset) + f"tokenizations/{n:010d}/{tokenizer}.json"


def _version_number(store: ObjectStore, tenant: str, dataset: str, version: int | str) -> int:
    """``version`` as a number: "latest" is the highest published one (0 when none)."""
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    if version == "latest":
        return blobs.latest_number(store, dataset_versions_prefix(tenant, dataset))
    if isinstance(version, str) and is_version_number(version):
        return int(version)
    raise InvalidArgument.field("version", f"{quote(version, 24)} must be a positive number of at most 10 digits "
                                           "or 'latest'")


def read_dataset_version(store: ObjectStore, tenant: str, dataset: str, version: int | str) -> dict[str, Any]:
    """The manifest of a dataset version (a number, or "latest"); NotFound when there is none.
    A soft-deleted dataset's versions still read (see the module docstring)."""
    n = _version_number(store, tenant, dataset, version)
    doc = blobs.read_json_or_none(store, dataset_version_key(tenant, dataset, n)) if n > 0 else None
    if doc is None:
        raise NotFound(f"tenants/{tenant}/datasets/{dataset}/versions/{version} not found")
    return doc


def read_tokenization(store: ObjectStore, tenant: str, dataset: str, version: int | str,
                      tokenizer: str) -> dict[str, Any]:
    """The manifest of a tokenization of a dataset version (a number, or "latest"); NotFound when
    the version or its tokenization with ``tokenizer`` does not exist. Shards are read through
    the manifest's ``shard_prefix`` and ``index_object_key``, never from a computed key."""
    n = _version_number(store, tenant, dataset, version)
    # Only published versions are tokenized, so the manifest alone answers (no version read).
    doc = blobs.read_json_or_none(store, tokenization_key(tenant, dataset, n, tokenizer)) if n > 0 else None
    if doc is None:
        raise NotFound(f"tenants/{tenant}/datasets/{dataset}/versions/{n}/tokenizations/{tokenizer} not found")
    return doc


# -- model versions (registry) -----------------------------------------------------------------


def model_prefix(tenant: str, model: str) -> str:
    """Everything of one model lives under this prefix."""
    return f"tenants/{tenant}/models/{model}/"


def model_versions_prefix(tenant: str, model: str) -> str:
    """Where version manifests are numbered (``blobs.allocate_numbered`` allocates them)."""
    return model_prefix(tenant, model) + "versions/"


def model_version_key(tenant: str, model: str, n: int) -> str:
    return blobs.numbered_key(model_versions_prefix(tenant, model), n)


def model_meta_prefix(tenant: str, model: str) -> str:
    return model_prefix(tenant, model) + "version-meta/"


def model_meta_key(tenant: str, model: str, n: int) -> str:
    """The mutable fields of version ``n`` (state, tags, description); written with CAS on etag."""
    return blobs.numbered_key(model_meta_prefix(tenant, model), n)


def merge_meta(manifest: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
    """A version as users see it: the immutable manifest overlaid with its mutable fields
    (``meta`` as ``blobs.read_json_with_etag`` returns it, or None when it has none)."""
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


def read_model_version(store: ObjectStore, tenant: str, model: str, n: int) -> dict[str, Any]:
    """Version ``n`` of a model straight from the store (manifest merged with its mutable
    fields); NotFound when it was never registered. A deleted version still reads, with
    ``state`` "deleted" (and ``purged`` once its artifacts are gone)."""
    manifest = blobs.read_json_or_none(store, model_version_key(tenant, model, n))
    if manifest is None:
        raise NotFound(f"tenants/{tenant}/models/{model}/versions/{n} not found")
    return merge_meta(manifest, blobs.read_json_with_etag(store, model_meta_key(tenant, model, n)))
