"""The registry's API boundary through a real registry on SeaweedFS (S3) and Redis: every input
is checked with the field named (never INTERNAL), field sizes are bounded so no stored record
breaks a later list, page tokens cannot start unbounded work, and artifact paths obey one rule."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

import pylon
from pylon.admin.v1 import admin_pb2
from pylon.registry.v1 import registry_pb2 as pb
from pylon_services.storage.factory import open_store
from tests.conftest import TEST_BUCKET, s3_connection
from tests.support.registry import InProcessRegistry, RegistryEnv, flush_db, registry_settings

pytestmark = pytest.mark.integration
DB = 6  # a keyspace of its own (see tests/support for the others)
M = "tenants/-/models/lim"


@pytest.fixture(scope="module")
def reg(redis_server: Any, seaweed: Any) -> Any:
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    flush_db(redis_url)
    conn = s3_connection(seaweed)
    store_url = f"s3://{TEST_BUCKET}/reglim-{uuid.uuid4().hex[:8]}"
    settings = registry_settings(redis_url, store_url, {"endpoint_url": conn["endpoint_url"],
                                                        "access_key": conn["access_key"],
                                                        "secret_key": conn["secret_key"]})
    server = InProcessRegistry(settings).start()
    env = RegistryEnv(f"127.0.0.1:{server.port}", settings, open_store(store_url, **conn), redis_url)
    with env.client() as c:
        env.store.put("tenants/acme/src/one/weights.bin", b"tiny weights")
        v = c.models.register("lim", source_uri="tenants/acme/src/one")
        for _ in range(5):
            c.models.set_alias("lim", "prod", v.version)
    yield env
    server.stop()


@pytest.fixture
def acme(reg: RegistryEnv) -> Any:
    with reg.client() as c:
        yield c


def _fails(c: Any, method: Callable[..., Any], request: Any, timeout: float = 10) -> pylon.PylonError:
    with pytest.raises(pylon.PylonError) as e:
        c.call(method, request, timeout=timeout)
    return e.value


def test_forged_alias_history_tokens_are_refused_at_once(acme: Any) -> None:
    """The review's "stop the registry for good": a viewer's token "1"+"0"*20 started a walk of
    10^20 S3 GETs that outlived the caller. Tokens now name a position the server checks."""

    def refused(token: str) -> None:
        started = time.monotonic()
        err = _fails(acme, acme.registry.ListAliasHistory,
                     pb.ListAliasHistoryRequest(name=f"{M}/aliases/prod", page_token=token), timeout=5)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
        assert err.violations[0].field == "page_token" and time.monotonic() - started < 2

    for token in ("1" + "0" * 20, "\u00b2", "x" * 600):
        refused(token)
    from pylon_services.common import paging

    refused(paging.encode_token("alias-history", 10**15, "acme/lim/prod"))  # well formed, beyond the newest move
    refused(paging.encode_token("alias-history", 3, "acme/lim/canary"))  # another alias's
    moves = list(acme.models.alias_history("lim", "prod", page_size=2))
    assert len(moves) == 5  # real tokens still page through everything


def _bad_requests(version: str) -> list[tuple[str, Any, Any]]:
    """(what, method name, request) that used to end in INTERNAL or do unbounded work."""
    v = f"{M}/versions/{version}"
    return [
        ("get-version", "GetModelVersion", pb.GetModelVersionRequest(name=v)),
        ("download", "GetArtifactDownload", pb.GetArtifactDownloadRequest(name=v)),
        ("lineage", "GetLineage", pb.GetLineageRequest(name=v)),
        ("delete-version", "DeleteModelVersion", pb.DeleteModelVersionRequest(name=v)),
        ("record-deployment", "RecordDeployment",
         pb.RecordDeploymentRequest(name=v, deployment="tenants/acme/deployments/d")),
        ("resolve", "ResolveModelUri", pb.ResolveModelUriRequest(uri=f"models:/lim/versions/{version}")),
    ]


ODD = ["\u00b2", "1" * 5000, "1" * 11]


@pytest.mark.parametrize("version", ODD, ids=["superscript-2", "5000-digits", "11-digits"])
def test_odd_version_numbers_are_invalid_argument(acme: Any, version: str) -> None:
    for what, method, request in _bad_requests(version):
        err = _fails(acme, getattr(acme.registry, method), request)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, (what, err)
        assert len(err.message) < 400, what  # a 5000-digit input is not echoed back


def test_tokens_filters_and_numbers_are_checked(acme: Any) -> None:
    cases = [
        ("page_token", pb.ListModelVersionsRequest(parent=M, page_token="\u00b2")),
        ("page_token", pb.ListModelVersionsRequest(parent=M, page_token="1" + "0" * 30)),
        ("page_token", pb.ListModelVersionsRequest(parent=M, order_by="create_time", page_token="o\u00b2")),
        ("page_token", pb.ListModelsRequest(page_token="x" * 5000)),
        ("filter", pb.ListModelVersionsRequest(parent=M, filter="version=\u00b2")),
        ("filter", pb.ListModelVersionsRequest(parent=M, filter="version>" + "9" * 5000)),
        ("filter", pb.ListModelVersionsRequest(parent=M, filter="tags.a=b AND " * 200 + "tags.a=b")),
        ("order_by", pb.ListModelVersionsRequest(parent=M, order_by="metrics." + "x" * 500)),
        ("version", pb.SetAliasRequest(name=f"{M}/aliases/prod", version=10**15)),
        ("format", pb.CreateModelVersionRequest(parent=M, source_uri="tenants/acme/src/one", format=-1)),  # type: ignore[arg-type]
        ("request_id", pb.CreateModelVersionRequest(parent=M, source_uri="tenants/acme/src/one",
                                                    request_id="../../../registry/tenants/x")),
        ("source_uri", pb.CreateModelVersionRequest(parent=M, source_uri="tenants/acme/../globex/src")),
        ("expires_s", pb.GetArtifactDownloadRequest(name=f"{M}/versions/1", expires_s=-5)),
        ("expires_s", pb.CreateArtifactUploadRequest(parent=M, expires_s=10**9, files=[
            pb.ArtifactFile(path="a.bin", digest="sha256:" + "0" * 64, size_bytes=1)])),
        ("etag", pb.SetAliasRequest(name=f"{M}/aliases/prod", version=1, etag="e" * 100_000)),
    ]
    methods = {pb.ListModelVersionsRequest: "ListModelVersions", pb.ListModelsRequest: "ListModels",
               pb.SetAliasRequest: "SetAlias", pb.CreateModelVersionRequest: "CreateModelVersion",
               pb.GetArtifactDownloadRequest: "GetArtifactDownload",
               pb.CreateArtifactUploadRequest: "CreateArtifactUpload"}
    for field, request in cases:
        err = _fails(acme, getattr(acme.registry, methods[type(request)]), request)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, (field, err)
        assert err.violations and err.violations[0].field == field, (field, err)
        assert len(err.message) < 1100, field


def test_admin_inputs_are_bounded(reg: RegistryEnv) -> None:
    with reg.client(role="admin") as admin:
        err = _fails(admin, admin.admin_stub.CreateApiKey, admin_pb2.CreateApiKeyRequest(
            tenant="acme", role=admin_pb2.ROLE_VIEWER, description="d" * (1 << 20)))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.violations[0].field == "description"
        err = _fails(admin, admin.admin_stub.DeleteApiKey, admin_pb2.DeleteApiKeyRequest(name="apiKeys/../x"))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT


def test_every_field_size_is_bounded(reg: RegistryEnv, acme: Any) -> None:
    """A 15.9 MiB description was accepted and then broke every later list; each field now has
    a limit, named in the error."""
    big = "d" * int(15.9 * (1 << 20))
    cases = [
        ("description", "CreateModel", pb.CreateModelRequest(model_id="huge", description=big)),
        ("description", "CreateModel", pb.CreateModelRequest(model_id="huge", description="d" * 2049)),
        ("tags", "CreateModel", pb.CreateModelRequest(model_id="huge", tags={f"k{i}": "v" for i in range(65)})),
        ("tags['k']", "CreateModel", pb.CreateModelRequest(model_id="huge", tags={"k": "v" * 257})),
        ("model.description", "UpdateModel", pb.UpdateModelRequest(
            model=pb.Model(name=M, description="d" * 5000), update_mask=["description"])),
        ("config", "CreateModelVersion", _version_with(lambda r: r.config.update({"x": "c" * (65 << 10)}))),
        ("signature", "CreateModelVersion", _version_with(lambda r: r.signature.update({"x": "c" * (65 << 10)}))),
        ("metrics", "CreateModelVersion", _version_with(lambda r: r.metrics.update({f"m{i}": 1.0 for i in range(257)}))),
        ("lineage.datasets", "CreateModelVersion", _version_with(
            lambda r: r.lineage.datasets.extend([f"tenants/acme/datasets/d/versions/{i}" for i in range(65)]))),
        ("lineage.job", "CreateModelVersion", _version_with(lambda r: setattr(r.lineage, "job", "j" * 1000))),
        ("description", "CreateModelVersion", _version_with(lambda r: setattr(r, "description", "d" * 2049))),
        ("version.tags", "UpdateModelVersion", pb.UpdateModelVersionRequest(
            version=pb.ModelVersion(name=f"{M}/versions/1", tags={"Bad Key": "v"}), update_mask=["tags"])),
    ]
    for field, method, request in cases:
        err = _fails(acme, getattr(acme.registry, method), request)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, (field, err)
        assert err.violations[0].field.startswith(field), (field, err.violations)
        assert len(err.message) < 1100
    assert "huge" not in [m.name.rsplit("/", 1)[1] for m in acme.models.list()]
    with reg.client(role="maintainer") as maintainer:
        err = _fails(maintainer, maintainer.registry.UpdateModel, pb.UpdateModelRequest(
            model=pb.Model(name=M, protected_aliases=[f"a{i}" for i in range(65)]), update_mask=["protected_aliases"]))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.violations[0].field == "model.protected_aliases"


def _version_with(change: Callable[[pb.CreateModelVersionRequest], None]) -> pb.CreateModelVersionRequest:
    request = pb.CreateModelVersionRequest(parent=M, source_uri="tenants/acme/src/one")
    change(request)
    return request


@pytest.mark.parametrize("path", ["w\x00.bin", "w\x01.bin", "../w.bin", "a//b.bin", "x" * 300, "a\u2028b"])
def test_a_path_no_client_could_write_never_enters_a_manifest(acme: Any, path: str) -> None:
    """The registry accepted a NUL in an artifact path; the version could then never be
    downloaded. Every upload path now applies the platform's one path rule."""
    file = pb.ArtifactFile(path=path, digest="sha256:" + "1" * 64, size_bytes=4)
    err = _fails(acme, acme.registry.CreateArtifactUpload, pb.CreateArtifactUploadRequest(parent=M, files=[file]))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.violations[0].field.startswith("files[")
    err = _fails(acme, acme.registry.CreateModelVersion, pb.CreateModelVersionRequest(
        parent=M, source_uri="tenants/acme/src/one", files=[file]))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_list_of_large_versions_is_paged_by_bytes(reg: RegistryEnv, acme: Any) -> None:
    """Versions at the size limits (64 KiB config and signature each): 150 of them are more than
    a 16 MiB message. A page stops early with a token instead of failing every list."""
    reg.store.put("tenants/acme/src/big/weights.bin", b"w")
    blob = "c" * (60 << 10)

    def register(i: int) -> int:
        with reg.client() as c:
            request = pb.CreateModelVersionRequest(parent="tenants/-/models/bigcfg", source_uri="tenants/acme/src/big",
                                                   request_id=f"big-{i}")
            request.config.update({"blob": blob})
            request.signature.update({"blob": blob})
            return int(c.call(c.registry.CreateModelVersion, request, timeout=60).version.version)

    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(register, range(150)))
    assert sorted(numbers) == list(range(1, 151))
    for order_by in ("", "create_time"):
        first = acme.call(acme.registry.ListModelVersions, pb.ListModelVersionsRequest(
            parent="tenants/-/models/bigcfg", page_size=1000, order_by=order_by), timeout=60)
        assert 0 < len(first.versions) < 150 and first.next_page_token and first.ByteSize() < 8 << 20
        everything = list(acme.models.versions("bigcfg", order_by=order_by, page_size=1000))
        assert sorted(v.version for v in everything) == list(range(1, 151))


def test_a_symlink_out_of_a_model_directory_is_not_uploaded(acme: Any, tmp_path: Any) -> None:
    """The SDK uploaded /etc/hostname through a link in a model directory."""
    from pylon.resources.models import SymlinkError

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the registry")
    os.symlink(secret, model / "weights.bin")
    with pytest.raises(SymlinkError):
        acme.models.register("linked", str(model))
    with pytest.raises(pylon.NotFoundError):
        acme.models.get("linked")
    v = acme.models.register("linked", str(model), follow_symlinks=True)  # asked for: e.g. an HF snapshot
    assert sorted(f["path"] for f in v.files) == ["config.json", "weights.bin"]
