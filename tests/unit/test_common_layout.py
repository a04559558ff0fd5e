"""The shared object-store layout (``pylon_services.common.layout``) on the local object store:
the keys other services rely on, and the readers jobs and engines use straight from the store,
fed by the writers the owning services use (ingest's ``versions.publish``, the registry's
numbered allocation and CAS meta)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon_services.common import blobs, layout
from pylon_services.common.errors import InvalidArgument, NotFound
from pylon_services.ingest.domain import versions
from pylon_services.ingest.domain.datasets import Datasets
from pylon_services.storage.local import LocalObjectStore


@pytest.fixture
def store(tmp_path: Any) -> LocalObjectStore:
    return LocalObjectStore(tmp_path)


def _publish(store: LocalObjectStore, tenant: str, dataset: str, digest: str, exact: int = 0) -> int:
    """Publish a dataset version the way ingest does (create-only manifest, next free number)."""
    Datasets(store).ensure_dataset(tenant, dataset, "", "key1")

    def doc_for(n: int) -> dict[str, Any]:
        return {"name": f"tenants/{tenant}/datasets/{dataset}/versions/{n}", "version": n, "digest": digest,
                "files": [{"path": "a.txt", "object_key": f"tenants/{tenant}/blobs/sha256/{digest[7:]}"}]}

    return versions.publish(store, tenant, dataset, doc_for, exact)[0]


def _register(store: LocalObjectStore, tenant: str, model: str, digest: str) -> int:
    """Register a model version the way the registry does (create-only numbered manifest)."""
    def manifest(n: int) -> dict[str, Any]:
        return {"name": f"tenants/{tenant}/models/{model}/versions/{n}", "version": n, "state": "ready",
                "files": [], "digest": digest, "create_time": 100.0}

    return blobs.allocate_numbered(store, layout.model_versions_prefix(tenant, model), manifest)[0]


def test_keys_are_the_stored_layout() -> None:
    # Objects already in buckets use these exact keys: a change here orphans them.
    assert layout.dataset_key("acme", "d") == "tenants/acme/datasets/d/dataset.json"
    assert layout.dataset_version_key("acme", "d", 7) == "tenants/acme/datasets/d/versions/0000000007.json"
    assert layout.tokenization_key("acme", "d", 7, "bpe") == "tenants/acme/datasets/d/tokenizations/0000000007/bpe.json"
    assert layout.model_version_key("acme", "m", 12) == "tenants/acme/models/m/versions/0000000012.json"
    assert layout.model_meta_key("acme", "m", 12) == "tenants/acme/models/m/version-meta/0000000012.json"


def test_dataset_versions_read_by_number_or_latest(store: LocalObjectStore) -> None:
    assert _publish(store, "acme", "d", "sha256:" + "1" * 64) == 1
    assert _publish(store, "acme", "d", "sha256:" + "2" * 64) == 2
    assert store.exists(layout.dataset_version_key("acme", "d", 2))
    assert layout.read_dataset_version(store, "acme", "d", 1)["digest"] == "sha256:" + "1" * 64
    assert layout.read_dataset_version(store, "acme", "d", "1")["version"] == 1
    assert layout.read_dataset_version(store, "acme", "d", "latest")["version"] == 2
    # A version published with an exact number beyond the hint is the latest too.
    _publish(store, "acme", "d", "sha256:" + "5" * 64, exact=5)
    assert layout.read_dataset_version(store, "acme", "d", "latest")["version"] == 5


def test_missing_dataset_versions_are_not_found(store: LocalObjectStore) -> None:
    with pytest.raises(NotFound, match="tenants/acme/datasets/d/versions/latest not found"):
        layout.read_dataset_version(store, "acme", "d", "latest")
    _publish(store, "acme", "d", "sha256:" + "1" * 64)
    with pytest.raises(NotFound, match="tenants/acme/datasets/d/versions/3 not found"):
        layout.read_dataset_version(store, "acme", "d", 3)
    with pytest.raises(NotFound):
        layout.read_dataset_version(store, "acme", "d", 0)
    with pytest.raises(NotFound):
        layout.read_dataset_version(store, "other", "d", 1)  # tenants never see each other's keys
    with pytest.raises(InvalidArgument, match="positive number .*or 'latest'"):
        layout.read_dataset_version(store, "acme", "d", "newest")
    for odd in ("\u00b2", "1" * 11, "1" * 5000):  # '²' passes str.isdigit, int() refuses it; 5000 digits too
        with pytest.raises(InvalidArgument):
            layout.read_dataset_version(store, "acme", "d", odd)


def test_a_soft_deleted_datasets_versions_still_read_from_the_store(store: LocalObjectStore) -> None:
    _publish(store, "acme", "d", "sha256:" + "1" * 64)
    ds = Datasets(store)
    ds.delete_dataset("acme", "d", "")
    with pytest.raises(NotFound):
        ds.visible_version("acme", "d", "1")  # the API hides it...
    # ...while a job that pinned it keeps reading it, by number or as latest.
    assert layout.read_dataset_version(store, "acme", "d", 1)["version"] == 1
    assert layout.read_dataset_version(store, "acme", "d", "latest")["version"] == 1
    assert ds.get_version("acme", "d", "1")["version"] == 1


def test_tokenizations_read_by_version_number_or_latest(store: LocalObjectStore) -> None:
    _publish(store, "acme", "d", "sha256:" + "1" * 64)
    _publish(store, "acme", "d", "sha256:" + "2" * 64)
    for n in (1, 2):
        store.put(layout.tokenization_key("acme", "d", n, "bpe"),
                  blobs.dump({"name": f"tenants/acme/datasets/d/versions/{n}/tokenizations/bpe", "total_tokens": n}))
    assert layout.read_tokenization(store, "acme", "d", 1, "bpe")["total_tokens"] == 1
    assert layout.read_tokenization(store, "acme", "d", "latest", "bpe")["total_tokens"] == 2
    with pytest.raises(NotFound, match="tenants/acme/datasets/d/versions/2/tokenizations/other not found"):
        layout.read_tokenization(store, "acme", "d", "latest", "other")
    with pytest.raises(NotFound, match="versions/3/tokenizations/bpe not found"):
        layout.read_tokenization(store, "acme", "d", 3, "bpe")
    with pytest.raises(NotFound):
        layout.read_tokenization(store, "acme", "empty", "latest", "bpe")


def test_model_versions_merge_their_mutable_fields(store: LocalObjectStore) -> None:
    digest = "sha256:" + "ab" * 32
    n = _register(store, "acme", "m", digest)
    fresh = layout.read_model_version(store, "acme", "m", n)
    assert (fresh["state"], fresh["update_time"], fresh["etag"]) == ("ready", 100.0, digest[7:39])
    info = store.put(layout.model_meta_key("acme", "m", n), blobs.dump(
        {"state": "archived", "tags": {"stage": "prod"}, "description": "old", "update_time": 200.0}),
        if_none_match=True)
    doc = layout.read_model_version(store, "acme", "m", n)
    assert (doc["state"], doc["tags"], doc["description"], doc["update_time"]) == ("archived", {"stage": "prod"},
                                                                                   "old", 200.0)
    assert doc["etag"] == doc["meta_etag"] == info.etag  # the CAS token of UpdateModelVersion
    assert doc["digest"] == digest and doc["create_time"] == 100.0  # immutable fields untouched


def test_deleted_and_missing_model_versions(store: LocalObjectStore) -> None:
    n = _register(store, "acme", "m", "sha256:" + "cd" * 32)
    store.put(layout.model_meta_key("acme", "m", n), blobs.dump({"state": "deleted", "delete_time": 5.0}))
    assert layout.read_model_version(store, "acme", "m", n)["state"] == "deleted"  # the caller decides
    with pytest.raises(NotFound, match="tenants/acme/models/m/versions/2 not found"):
        layout.read_model_version(store, "acme", "m", 2)
