"""Dataset records on the (local-filesystem) object store: create, soft delete, and the guard
that stops an upload processed while its dataset was deleted from publishing into it."""

from __future__ import annotations

import pytest

from pylon_services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pylon_services.ingest.domain.datasets import Datasets
from pylon_services.storage.local import LocalObjectStore


@pytest.fixture
def ds(tmp_path):
    return Datasets(LocalObjectStore(tmp_path))


def test_an_upload_finishing_after_the_delete_cannot_publish_into_it(ds):
    ds.ensure_dataset("acme", "live", "", "key1")  # the first version's upload created it
    ds.delete_dataset("acme", "live", "")
    with pytest.raises(FailedPrecondition, match="deleted"):
        ds.ensure_dataset("acme", "live", "", "key1")  # what the runner calls before publishing
    with pytest.raises(FailedPrecondition, match="deleted"):
        ds.check_writable("acme", "live")
    with pytest.raises(NotFound):
        ds.visible_version("acme", "live", "1")


def test_create_validates_and_is_idempotent_per_request_id(ds):
    doc = ds.create_dataset("acme", "a", "d", {"b": "2", "a": "1"}, "key1", "r1")
    assert doc["labels"] == {"a": "1", "b": "2"} and doc["_etag"]
    assert ds.create_dataset("acme", "a", "other", {}, "key1", "r1")["description"] == "d"
    with pytest.raises(AlreadyExists):
        ds.create_dataset("acme", "a", "", {}, "key1", "")  # no request id: never a retry
    with pytest.raises(InvalidArgument):
        ds.create_dataset("acme", "-a", "", {}, "key1", "")
    ds.delete_dataset("acme", "a", doc["_etag"])
    assert ds.list_datasets("acme", 10, None) == ([], None)
    with pytest.raises(NotFound):
        ds.delete_dataset("acme", "a", "")
