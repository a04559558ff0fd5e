"""A model format whose ``ModelFormat`` number is reserved (6, ``pylon_gpt`` in stored manifests),
through the real platform: a version stored in it still reads, lists, resolves and downloads (as
OTHER), a fine-tune naming it is refused as a format the trainer does not take, and registering a
new version in it is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import pylon
from pylon.registry.v1 import registry_pb2 as pb
from pylon_services.common.layout import model_version_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stored(tenant_clients: dict[str, Any], admin_client: Any, platform: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Version 1 of acme's "fmt-stored", its manifest naming format "pylon_gpt" as a registry
    that had the format stored it; the index rebuilt from storage."""
    from pylon_services.storage.factory import open_store

    acme = tenant_clients["acme"]
    d = tmp_path_factory.mktemp("stored")
    (d / "config.json").write_text('{"model_type": "my-own-arch"}')
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    v = acme.models.register("fmt-stored", str(d))
    store = open_store(platform.base["object_store_url"])
    key = model_version_key("acme", "fmt-stored", v.version)
    manifest = json.loads(store.get(key))
    store.put(key, json.dumps({**manifest, "format": "pylon_gpt"}).encode())
    admin_client.admin.reindex()
    return v


def test_a_stored_version_in_the_reserved_format_reads_as_other(tenant_clients, stored, tmp_path: Path):
    acme = tenant_clients["acme"]
    assert acme.models.get("fmt-stored", stored.version).format == "other"
    assert [(v.version, v.format) for v in acme.models.versions("fmt-stored")] == [(stored.version, "other")]
    assert acme.models.resolve("models:/fmt-stored/latest").digest == stored.digest
    out = acme.models.download("fmt-stored", str(tmp_path / "out"), version=stored.version)
    assert (Path(out) / "config.json").read_text() == '{"model_type": "my-own-arch"}'


def test_a_fine_tune_of_it_is_refused_as_a_format_the_trainer_does_not_take(tenant_clients, stored):
    with pytest.raises(pylon.InvalidArgumentError) as e:
        tenant_clients["acme"].jobs.submit({"resources": {"gpus": 1, "gpu_types": ["A100"]}, "trainer": {
            "trainer": "causal-lm", "datasets": [], "base_model": "models:/fmt-stored/latest"}})
    assert [v.field for v in e.value.violations] == ["spec.trainer.base_model"]
    assert "is OTHER; causal-lm fine-tunes HF_TRANSFORMERS" in str(e.value)


def _create(client: Any, number: int) -> pylon.InvalidArgumentError:
    """The error of registering a version in format ``number`` (sent as a raw enum number, as a
    client built from older protos would)."""
    req = pb.CreateModelVersionRequest(parent="tenants/acme/models/fmt-stored", source_uri="tenants/acme/fmt/",
                                       format=number)  # type: ignore[arg-type]
    with pytest.raises(pylon.InvalidArgumentError) as e:
        client.call(client.registry.CreateModelVersion, req)
    assert [v.field for v in e.value.violations] == ["format"]
    return e.value


def test_a_new_version_in_the_reserved_format_is_refused_naming_the_field(tenant_clients, stored):
    acme = tenant_clients["acme"]
    reserved = str(_create(acme, 6))
    assert "pylon_gpt (a reserved format) is not accepted for new versions" in reserved and "hf_transformers" in reserved
    assert "unknown value '99'" in str(_create(acme, 99))
    assert [v.version for v in acme.models.versions("fmt-stored")] == [stored.version]  # nothing was registered
