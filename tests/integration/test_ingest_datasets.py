"""CreateDataset and DeleteDataset through a real ingest on SeaweedFS + Redis + Ray: validation,
idempotent retries, soft delete (hidden from the API, data kept, name not reused), etags,
another tenant's datasets, and a delete refused while an operation writes to the dataset."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

import pylon
from pylon.common.v1 import common_pb2
from pylon.ingest.v1 import ingest_pb2
from tests.support.ingest_server import ingest_fixtures

pytestmark = pytest.mark.integration


ingest, acme = ingest_fixtures(db=12)


def test_create_then_get_and_list_and_a_retry_returns_the_same(acme, ingest):
    d = acme.datasets.create("corpus", description="web text", labels={"team": "nlp", "lang": "en"},
                             request_id="req-1")
    assert (d.name, d.description, d.labels, d.latest_version) == ("tenants/acme/datasets/corpus", "web text",
                                                                   {"lang": "en", "team": "nlp"}, 0)
    assert d.etag and acme.datasets.get("corpus") == d
    assert "tenants/acme/datasets/corpus" in [x.name for x in acme.datasets.list()]
    assert acme.datasets.create("corpus", request_id="req-1") == d  # a retried create
    with pytest.raises(pylon.AlreadyExistsError, match="already exists"):
        acme.datasets.create("corpus", request_id="req-2")
    # an upload adds versions to a dataset created empty
    acme.datasets.import_objects([_put(ingest.store(), "c.jsonl")], "corpus")
    assert acme.datasets.get("corpus").latest_version == 1


def _put(store, name: str) -> str:
    """An object in the tenant's area to import."""
    key = f"tenants/acme/in/{name}"
    store.put(key, b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(20)))
    return key


def test_create_rejects_bad_input_with_the_rule(acme, ingest):
    call = acme.call
    with pytest.raises(pylon.InvalidArgumentError, match="lowercase letters, digits"):
        acme.datasets.create("Bad Name")
    with pytest.raises(pylon.InvalidArgumentError, match="dataset_id"):
        acme.datasets.create("1starts-with-digit")
    with pytest.raises(pylon.InvalidArgumentError, match="description"):
        acme.datasets.create("long-desc", description="x" * 2049)
    with pytest.raises(pylon.InvalidArgumentError, match="key"):
        acme.datasets.create("bad-label", labels={"Not OK": "v"})
    with pytest.raises(pylon.InvalidArgumentError, match="256"):
        acme.datasets.create("long-label", labels={"k": "v" * 257})
    with pytest.raises(pylon.InvalidArgumentError, match="at most 64"):
        acme.datasets.create("many-labels", labels={f"k{i}": "v" for i in range(65)})
    with pytest.raises(pylon.InvalidArgumentError, match="duplicate label key"):
        call(acme.ingest.CreateDataset, ingest_pb2.CreateDatasetRequest(
            parent="tenants/-", dataset_id="dup-labels",
            labels=[common_pb2.Label(key="a", value="1"), common_pb2.Label(key="a", value="2")]))
    with pytest.raises(pylon.NotFoundError):
        call(acme.ingest.CreateDataset, ingest_pb2.CreateDatasetRequest(parent="tenants/globex", dataset_id="x"))
    with ingest.client("viewer") as viewer, pytest.raises(pylon.PermissionDeniedError):
        viewer.datasets.create("by-viewer")
    with ingest.client("viewer") as viewer, pytest.raises(pylon.PermissionDeniedError):
        viewer.datasets.delete("corpus")
    names = [d.name for d in acme.datasets.list()]
    assert not [n for n in names if n.rsplit("/", 1)[1] in ("long-desc", "bad-label", "long-label", "many-labels",
                                                            "dup-labels", "by-viewer")]


def test_delete_hides_the_dataset_keeps_the_data_and_the_name(acme, ingest, tmp_path):
    v = acme.datasets.import_objects([_put(ingest.store(), "d.jsonl")], "doomed")
    manifest_key = "tenants/acme/datasets/doomed/versions/0000000001.json"
    acme.datasets.delete("doomed")
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("doomed")
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("doomed", 1)
    with pytest.raises(pylon.NotFoundError):
        list(acme.datasets.versions("doomed"))
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.preview("doomed", 1)
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.tokenize("doomed", 1)
    assert "tenants/acme/datasets/doomed" not in [d.name for d in acme.datasets.list()]
    store = ingest.store()
    assert store.exists(manifest_key) and store.exists(v.processed_files[0]["object_key"])  # data kept
    with pytest.raises(pylon.FailedPreconditionError, match="deleted"):
        acme.datasets.import_objects([_put(store, "e.jsonl")], "doomed")
    with pytest.raises(pylon.FailedPreconditionError, match="deleted"):
        local = tmp_path / "more.jsonl"
        local.write_text('{"text": "hello"}\n')
        acme.datasets.upload(str(local), "doomed")
    with pytest.raises(pylon.AlreadyExistsError, match="not reused"):
        acme.datasets.create("doomed")
    with pytest.raises(pylon.NotFoundError):  # a repeated delete
        acme.datasets.delete("doomed")


def test_delete_checks_the_etag_and_the_tenant(acme, ingest):
    d = acme.datasets.create("guarded")
    with pytest.raises(pylon.AbortedError, match="etag"):
        acme.datasets.delete("guarded", etag="not-the-etag")
    with ingest.client("globex") as globex:
        with pytest.raises(pylon.NotFoundError):
            globex.datasets.delete("tenants/acme/datasets/guarded")
        with pytest.raises(pylon.NotFoundError):
            globex.datasets.delete("guarded")  # its own tenant has none
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.delete("never-existed")
    with pytest.raises(pylon.InvalidArgumentError):
        acme.call(acme.ingest.DeleteDataset, ingest_pb2.DeleteDatasetRequest(name="datasets/guarded"))
    acme.datasets.delete("guarded", etag=d.etag)
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("guarded")


def test_delete_is_refused_while_an_operation_writes_to_the_dataset(acme, ingest):
    from pylon_services.ingest.domain.operations import RUNNING, new_operation
    from pylon_services.ingest.store.redis_state import RedisState

    acme.datasets.create("busy")
    op = new_operation("acme", "process", "tenants/acme/datasets/busy", {"dataset": "busy", "files": []})
    op.state = RUNNING

    async def seed(done: bool) -> None:
        r = aioredis.from_url(ingest.settings.redis_url)
        state = RedisState(r)
        if not done:
            await state.acquire_lease(op.id, "another-replica", 600)  # so this ingest does not adopt it
            await state.save(op)
        else:
            op.fail("CANCELLED", "test over")
            await state.save(op)
            await state.release_lease(op.id, "another-replica")
        await r.aclose()

    asyncio.run(seed(False))
    try:
        with pytest.raises(pylon.FailedPreconditionError, match="running operation"):
            acme.datasets.delete("busy")
        assert acme.datasets.get("busy").name == "tenants/acme/datasets/busy"
    finally:
        asyncio.run(seed(True))
    acme.datasets.delete("busy")


def test_cli_data_create_and_delete(ingest, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pylon.cli import app

    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    base = ["--address", ingest.address, "--token", ingest.tokens["acme"]]
    run = CliRunner().invoke
    made = run(app, [*base, "datasets", "create", "cli-made", "--description", "from the CLI", "--label", "team=nlp",
                     "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["labels"] == {"team": "nlp"}
    again = run(app, [*base, "datasets", "create", "cli-made", "--json"])
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    bad = run(app, [*base, "datasets", "create", "cli-bad", "--label", "novalue"])
    assert bad.exit_code != 0 and "KEY=VALUE" in bad.output
    kept = run(app, [*base, "datasets", "delete", "cli-made"], input="n\n")
    assert kept.exit_code != 0
    gone = run(app, [*base, "datasets", "delete", "cli-made", "--yes", "--json"])
    assert gone.exit_code == 0, gone.output
    twice = run(app, [*base, "datasets", "delete", "cli-made", "--yes"])
    assert twice.exit_code != 0 and isinstance(twice.exception, pylon.NotFoundError)
