"""The model registry through its real gRPC API and the SDK, on SeaweedFS (S3) and on the
local-filesystem store, with its index in a real Redis."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis

from pylon import transfer
from pylon.errors import PylonError
from pylon.registry.v1 import registry_pb2 as pb
from pylon_services.runtime.internal_auth import internal_header
from pylon_services.runtime.settings import Settings
from pylon_services.storage.factory import open_store
from tests.conftest import TEST_BUCKET, s3_connection
from tests.support.registry import InProcessRegistry, RegistryEnv, flush_db, registry_settings


def _code(err: pytest.ExceptionInfo[PylonError]) -> grpc.StatusCode:
    return err.value.code


@pytest.fixture(scope="module", params=["s3", "local"])
def reg(request: pytest.FixtureRequest, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kind = request.param
    redis_url = redis_server.url.rsplit("/", 1)[0] + ("/3" if kind == "s3" else "/4")
    flush_db(redis_url)
    if kind == "s3":
        seaweed = request.getfixturevalue("seaweed")
        conn = s3_connection(seaweed)
        store_url = f"s3://{TEST_BUCKET}/reg-{uuid.uuid4().hex[:8]}"
        s3 = {"endpoint_url": conn["endpoint_url"], "access_key": conn["access_key"], "secret_key": conn["secret_key"]}
        store = open_store(store_url, **conn)
    else:
        store_url, s3 = f"file://{tmp_path_factory.mktemp('reg-objects')}", None
        store = open_store(store_url)
    settings = registry_settings(redis_url, store_url, s3)
    server = InProcessRegistry(settings).start()
    yield RegistryEnv(f"127.0.0.1:{server.port}", settings, store, redis_url)
    server.stop()


def _tree(root: Any, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return str(root)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, root)] = open(full, "rb").read()
    return out


# -- artifacts: upload, verify, dedupe, download, cache -------------------------------------------
def test_register_local_dir_then_download_is_verified_and_cached(reg: RegistryEnv, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    files = {"config.json": b'{"n_layer": 2}', "model.safetensors": os.urandom(12 << 20), "sub/tok.txt": b"hello"}
    src = _tree(tmp_path / "m", files)
    seen: list[tuple[int, int]] = []
    with reg.client() as c:
        v = c.models.register("artifacts", src, part_size=5 << 20, progress=lambda d, t: seen.append((d, t)))
        assert v.format == "hf_transformers" and v.state == "ready"
        assert {f["path"]: f["digest"] for f in v.files} == {p: _digest(b) for p, b in files.items()}
        assert seen and seen[-1][0] == seen[-1][1] == sum(len(b) for b in files.values())
        # the same bytes again: nothing is sent, a new version points at the same blobs
        seen.clear()
        v2 = c.models.register("artifacts", src, part_size=5 << 20, progress=lambda d, t: seen.append((d, t)))
        assert v2.version == v.version + 1 and v2.digest == v.digest
        assert all(t == 0 for _, t in seen)
        # download: identical bytes; a second download moves no bytes
        out = c.models.download(f"models:/artifacts/versions/{v.version}", str(tmp_path / "out"))
        assert _read_tree(out) == files
        moved: list[int] = []
        out2 = c.models.download("models:/artifacts/latest", str(tmp_path / "out2"), progress=lambda d, t: moved.append(t))
        assert _read_tree(out2) == files and all(t == 0 for t in moved)


def test_export_then_import_hf_directory_round_trips(reg: RegistryEnv, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    files = {"config.json": b'{"model_type": "gpt2"}', "model.safetensors": os.urandom(1000),
             "tokenizer.json": b"{}", "generation_config.json": b"{}"}
    with reg.client() as c:
        v = c.models.register("hf", _tree(tmp_path / "hf", files), format="hf_transformers")
        out = c.models.export(f"models:/hf/versions/{v.version}", str(tmp_path / "exported"))
        assert _read_tree(out) == files
        with open(os.path.join(out, "config.json"), "ab") as f:  # exported files are plain, editable copies
            f.write(b" ")
        again = c.models.download(f"models:/hf/versions/{v.version}", str(tmp_path / "again"))
        assert _read_tree(again) == files  # the cache was not touched by the edit


def test_digest_mismatch_is_rejected_and_nothing_becomes_visible(reg: RegistryEnv, tmp_path: Any) -> None:
    from pylon import transfer

    good, bad = b"the real weights", b"something else!!"
    with reg.client() as c:
        c.models.register("strict", _tree(tmp_path / "a", {"w.bin": b"first"}))
        before = c.models.get("strict").latest_version
        session = c.call(c.registry.CreateArtifactUpload, pb.CreateArtifactUploadRequest(
            parent="tenants/-/models/strict", files=[pb.ArtifactFile(path="w.bin", digest=_digest(good), size_bytes=len(good))],
            part_size=5 << 20))
        target = session.targets[0]
        path = tmp_path / "bad.bin"
        path.write_bytes(bad)
        if target.url:
            # The declared sha256 is signed into the URL: the object store refuses other bytes.
            assert target.headers["x-amz-checksum-sha256"] and target.headers["If-None-Match"] == "*"
            with pytest.raises(transfer.TransferError, match="HTTP 400"):
                transfer.put_file(str(path), target.url, headers=dict(target.headers))
            why = "was never uploaded"
        else:
            import google_crc32c

            c.call(c.registry.UploadArtifact, iter([pb.UploadArtifactRequest(
                upload=session.upload, path="w.bin", offset=0, data=bad, crc32c=google_crc32c.value(bad))]))
            why = "hash to"
        with pytest.raises(PylonError) as err:
            c.call(c.registry.CreateModelVersion, pb.CreateModelVersionRequest(
                parent="tenants/-/models/strict", upload=session.upload,
                files=[pb.ArtifactFile(path="w.bin", digest=_digest(good), size_bytes=len(good))]))
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and why in str(err.value)
        assert c.models.get("strict").latest_version == before
        assert len(list(c.models.versions("strict"))) == before
        # the bad bytes did not become a blob under the good digest
        assert not reg.store.exists(f"tenants/acme/blobs/sha256/{_digest(good)[7:]}")


def test_presigned_put_cannot_replace_bytes_after_registration(reg: RegistryEnv, tmp_path: Any) -> None:
    """A whole-file upload URL stays valid for an hour after the version is registered; it is
    create-only (a signed If-None-Match), so it cannot swap the verified bytes afterwards."""
    import http.client
    import urllib.parse

    evil = b"swapped in later!!"
    for good, declared in ((b"registered weights", True), (b"other weights!", False)):
        # declared: the store verifies the bytes on PUT; not: they are read back at registration
        declared = _digest(good) if declared else ""
        with reg.client() as c:
            f = pb.ArtifactFile(path="w.bin", digest=declared, size_bytes=len(good))
            session = c.call(c.registry.CreateArtifactUpload, pb.CreateArtifactUploadRequest(
                parent="tenants/-/models/sealed", files=[f], part_size=5 << 20))
            target = session.targets[0]
            if not target.url:
                pytest.skip("the local store has no URLs: uploads stream through the registry")
            assert target.headers["If-None-Match"] == "*"
            assert ("x-amz-checksum-sha256" in target.headers) == bool(declared)
            (tmp_path / "w.bin").write_bytes(good)
            transfer.put_file(str(tmp_path / "w.bin"), target.url, headers=dict(target.headers))
            v = c.call(c.registry.CreateModelVersion, pb.CreateModelVersionRequest(
                parent="tenants/-/models/sealed", upload=session.upload,
                files=[pb.ArtifactFile(path="w.bin", digest=_digest(good), size_bytes=len(good))]))

            def put(headers: dict[str, str], url: str = target.url) -> int:
                u = urllib.parse.urlsplit(url)
                conn = http.client.HTTPConnection(u.netloc, timeout=30)
                conn.request("PUT", f"{u.path}?{u.query}", body=evil, headers=headers)
                status = conn.getresponse().status
                conn.close()
                return status

            assert put(dict(target.headers)) in (400, 412)  # exists (create-only), or not the signed digest
            assert put({}) == 403  # dropping the signed headers breaks the signature
            # A retry of the same upload is not an error.
            assert transfer.put_file(str(tmp_path / "w.bin"), target.url, headers=dict(target.headers)) == ""
            c.models.download(f"models:/sealed/versions/{v.version.version}", str(tmp_path / f"dl{declared[:9]}"),
                              cache_dir=str(tmp_path / "cache"), verify="sha256")
            assert (tmp_path / f"dl{declared[:9]}" / "w.bin").read_bytes() == good


def test_large_file_hashed_during_upload_is_verified_at_registration(reg: RegistryEnv, tmp_path: Any,
                                                                      monkeypatch: Any) -> None:
    """A large file seen for the first time is declared without a digest, hashed while its parts
    upload, and its digest checked at registration: a wrong one or none is refused."""
    from pylon.resources import models as sdk_models

    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sdk_models, "UPFRONT_HASH_MAX", 0)  # as for a file above 1 GiB
    data = os.urandom((5 << 20) + 12345)  # two parts of 5 MiB
    root = _tree(tmp_path / "big", {"weights.bin": data, "config.json": b"{}"})
    with reg.client() as c:
        v = c.models.register("deferred", root, part_size=5 << 20)
        assert {f["path"]: f["digest"] for f in v.files}["weights.bin"] == _digest(data)
        out = c.models.download(f"models:/deferred/versions/{v.version}", str(tmp_path / "out"))
        assert (tmp_path / "out" / "weights.bin").read_bytes() == data and out

        def staged(digest: str) -> Any:
            session = c.call(c.registry.CreateArtifactUpload, pb.CreateArtifactUploadRequest(
                parent="tenants/-/models/deferred", part_size=5 << 20,
                files=[pb.ArtifactFile(path="weights.bin", digest=digest, size_bytes=len(data))]))
            (target,) = session.targets
            assert not target.present  # no digest: nothing to compare, so it is sent
            c.models._send(session, {"weights.bin": str(tmp_path / "big" / "weights.bin")},
                           {"weights.bin": len(data)}, 4, None)
            return session

        for declared, why in (("", "must be given"), (_digest(b"other"), "hash to")):
            session = staged("")
            with pytest.raises(PylonError) as err:
                c.call(c.registry.CreateModelVersion, pb.CreateModelVersionRequest(
                    parent="tenants/-/models/deferred", upload=session.upload, format=pb.MODEL_FORMAT_OTHER,
                    files=[pb.ArtifactFile(path="weights.bin", digest=declared, size_bytes=len(data))]))
            assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and why in str(err.value)
        assert c.models.get("deferred").latest_version == v.version


def test_store_verified_upload_is_not_read_back_and_gets_its_crc32c_after(reg: RegistryEnv, tmp_path: Any,
                                                                          monkeypatch: Any) -> None:
    """A file hashed before upload goes in one PUT the object store verifies: registration asks
    the store instead of reading the bytes back (so the manifest has no CRC32C), and the CRC32C
    for cheap download checks is taken afterwards and served with the download plan."""
    import google_crc32c

    from pylon_services.registry.domain.artifacts import crc_key
    from tests.support.waiting import wait_for

    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    data = os.urandom((9 << 20) + 7)
    with reg.client() as c:
        session = c.call(c.registry.CreateArtifactUpload, pb.CreateArtifactUploadRequest(
            parent="tenants/-/models/checked", part_size=5 << 20,
            files=[pb.ArtifactFile(path="w.bin", digest=_digest(data), size_bytes=len(data))]))
        if not session.targets[0].url:
            pytest.skip("the local store has no URLs: uploads stream through the registry")
        assert not session.targets[0].part_urls and session.targets[0].headers["x-amz-checksum-sha256"]
        v = c.models.register("checked", _tree(tmp_path / "m", {"w.bin": data}))
        (entry,) = v.files
        assert not entry.get("crc32c")  # nothing was read back at registration
        wait_for(lambda: reg.store.exists(crc_key("acme", entry["digest"])), 60, "the CRC32C to be recorded")
        plan = c.call(c.registry.GetArtifactDownload, pb.GetArtifactDownloadRequest(name=v.name))
        assert plan.files[0].file.crc32c == google_crc32c.value(data)
        out = c.models.download(f"models:/checked/versions/{v.version}", str(tmp_path / "out"),
                                cache_dir=str(tmp_path / "dl-cache"))
        assert (tmp_path / "out" / "w.bin").read_bytes() == data and out
    # Bytes that no longer match their digest when the CRC32C is taken get none (logged instead).
    from pylon_services.registry.domain.artifacts import record_crc32c

    other = os.urandom(9 << 20)
    reg.store.put("tenants/acme/scratch/w.bin", other[:-1] + bytes([other[-1] ^ 1]))
    entry = {"digest": _digest(other), "size_bytes": len(other), "object_key": "tenants/acme/scratch/w.bin"}
    assert record_crc32c(reg.store, "acme", [entry]) == 0
    assert not reg.store.exists(crc_key("acme", _digest(other)))


def test_downloads_are_checked_against_the_registrys_crc32c_and_sha256(reg: RegistryEnv, tmp_path: Any,
                                                                        monkeypatch: Any) -> None:
    """Bytes damaged in storage after registration never reach the cache, whichever check runs."""
    import google_crc32c

    from pylon.resources import models as sdk_models

    monkeypatch.setattr(sdk_models, "UPFRONT_HASH_MAX", 0)  # hashed while sent, read back at registration
    data = os.urandom(6 << 20)
    with reg.client() as c:
        v = c.models.register("crc", _tree(tmp_path / "m", {"w.bin": data}), part_size=5 << 20)
        (f,) = c.call(c.registry.GetArtifactDownload, pb.GetArtifactDownloadRequest(name=v.name)).files
        assert f.file.crc32c == google_crc32c.value(data)  # taken while the registry verified the sha256
        reg.store.put(f.file.object_key, bytes([data[0] ^ 1]) + data[1:])  # same size, one bit off
        for verify in ("crc32c", "sha256"):
            monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / f"cache-{verify}"))
            with pytest.raises((transfer.TransferError, PylonError), match="hash to"):
                c.models.download(f"models:/crc/versions/{v.version}", str(tmp_path / verify), verify=verify)
            assert not (tmp_path / verify / "w.bin").exists()
        with pytest.raises(ValueError, match="verify must be"):
            c.models.download(f"models:/crc/versions/{v.version}", verify="md5")


def test_missing_file_is_rejected(reg: RegistryEnv) -> None:
    reg.store.put("tenants/acme/jobs/j1/output/model.bin", b"weights")
    with reg.client() as c:
        with pytest.raises(PylonError) as err:
            c.call(c.registry.CreateModelVersion, pb.CreateModelVersionRequest(
                parent="tenants/-/models/missing", source_uri="tenants/acme/jobs/j1/output",
                files=[pb.ArtifactFile(path="model.bin"), pb.ArtifactFile(path="config.json")]))
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "config.json" in str(err.value)
        assert c.models.get("missing").latest_version == 0
        v = c.models.register("missing", source_uri="tenants/acme/jobs/j1/output", job="tenants/acme/jobs/j1")
        assert v.version == 1 and [f["path"] for f in v.files] == ["model.bin"]


def test_invalid_names_say_the_rule(reg: RegistryEnv, tmp_path: Any) -> None:
    with reg.client() as c:
        with pytest.raises(PylonError) as err:
            c.call(c.registry.CreateModel, pb.CreateModelRequest(model_id="Bad Name"))
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "lowercase" in str(err.value)
        c.models.register("named", _tree(tmp_path, {"f": b"x"}))
        with pytest.raises(PylonError) as err:
            c.models.set_alias("named", "PROD!", 1)
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "lowercase" in str(err.value)
        with pytest.raises(PylonError) as err:
            c.models.resolve("named@prod")
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "models:/" in str(err.value)
        with pytest.raises(PylonError) as err:
            list(c.models.versions("named", filter="metrics.loss < low"))
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT


# -- aliases ---------------------------------------------------------------------------------------
def test_concurrent_cas_alias_moves_form_one_chain(reg: RegistryEnv) -> None:
    reg.store.put("tenants/acme/src/cas/w", b"w")
    with reg.client() as c:
        for _ in range(3):
            c.models.register("cas", source_uri="tenants/acme/src/cas")
        first = c.models.set_alias("cas", "prod", 1)
    successes: list[tuple[str, str]] = []
    rejected = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def mover(i: int) -> None:
        with reg.client() as c:
            start.wait()
            for _ in range(3):
                current = c.models.get_alias("cas", "prod")
                try:
                    moved = c.models.set_alias("cas", "prod", 1 + (i % 3), etag=current.etag)
                except PylonError as e:
                    assert e.code == grpc.StatusCode.ABORTED
                    with lock:
                        rejected.append(i)
                    continue
                with lock:
                    successes.append((current.etag, moved.etag))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(mover, range(32)))
    assert successes and rejected
    chain = dict(successes)
    assert len(chain) == len(successes), "two moves succeeded from the same etag"
    etag, steps = first.etag, 0
    while etag in chain:
        etag, steps = chain[etag], steps + 1
    assert steps == len(successes)
    with reg.client() as c:
        assert c.models.get_alias("cas", "prod").etag == etag
        assert len(list(c.models.alias_history("cas", "prod", page_size=1000))) == 1 + len(successes)


def test_alias_history_roles_and_protected_aliases(reg: RegistryEnv) -> None:
    reg.store.put("tenants/acme/src/prot/w", b"w")
    with reg.client() as editor, reg.client(role="maintainer") as maint, reg.client(role="viewer") as viewer:
        editor.models.register("prot", source_uri="tenants/acme/src/prot")
        editor.models.register("prot", source_uri="tenants/acme/src/prot")
        editor.models.set_alias("prot", "prod", 1)
        with pytest.raises(PylonError) as err:
            viewer.models.set_alias("prot", "prod", 2)
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED
        m = editor.models.get("prot")
        with pytest.raises(PylonError) as err:  # only maintainers may protect aliases
            editor.call(editor.registry.UpdateModel, pb.UpdateModelRequest(
                model=pb.Model(name=m.name, protected_aliases=["prod"]), update_mask=["protected_aliases"]))
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED
        maint.call(maint.registry.UpdateModel, pb.UpdateModelRequest(
            model=pb.Model(name=m.name, protected_aliases=["prod"]), update_mask=["protected_aliases"]))
        with pytest.raises(PylonError) as err:
            editor.models.set_alias("prot", "prod", 2)
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED and "protected" in str(err.value)
        assert editor.models.get_alias("prot", "prod").version == 1
        maint.models.set_alias("prot", "prod", 2)
        editor.models.set_alias("prot", "canary", 2)  # unprotected aliases stay open to editors
        history = list(viewer.models.alias_history("prot", "prod"))
        assert [(h.from_version, h.to_version) for h in history] == [(1, 2), (0, 1)]
        assert history[0].actor != history[1].actor and history[0].time >= history[1].time
        with pytest.raises(PylonError) as err:
            editor.models.delete_version("prot", 1)
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED


def test_tenants_are_isolated(reg: RegistryEnv, tmp_path: Any) -> None:
    with reg.client() as acme, reg.client("globex") as globex:
        acme.models.register("secret-model", _tree(tmp_path, {"w": b"w"}))
        for call in (lambda: globex.models.get("tenants/acme/models/secret-model"),
                     lambda: globex.models.get("tenants/acme/models/secret-model", 1),
                     lambda: globex.models.download("tenants/acme/models/secret-model", version=1),
                     lambda: globex.models.set_alias("tenants/acme/models/secret-model", "prod", 1)):
            with pytest.raises(PylonError) as err:
                call()
            assert _code(err) == grpc.StatusCode.NOT_FOUND
        with pytest.raises(PylonError) as err:
            globex.models.resolve("models:/secret-model/latest")  # resolves in the caller's tenant
        assert _code(err) == grpc.StatusCode.NOT_FOUND


# -- lifecycle ---------------------------------------------------------------------------------------
def _internal_key(reg: RegistryEnv) -> str:
    """The internal key the registry derives from its admin key (what the gateway holds)."""
    return Settings(admin_key=reg.settings["admin_key"]).internal_key


def test_delete_refused_while_aliased_or_deployed_and_numbers_never_reused(reg: RegistryEnv) -> None:
    reg.store.put("tenants/acme/src/life/w", b"w")
    with reg.client() as c, reg.client(role="maintainer") as maint:
        for _ in range(3):
            c.models.register("life", source_uri="tenants/acme/src/life")
        c.models.set_alias("life", "prod", 3)
        with pytest.raises(PylonError) as err:
            maint.models.delete_version("life", 3)
        assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION and "prod" in str(err.value)
        record = pb.RecordDeploymentRequest(name="tenants/acme/models/life/versions/2",
                                            deployment="tenants/acme/deployments/chat")
        with pytest.raises(PylonError) as err:  # only the gateway (the internal key) records deployments
            c.call(c.registry.RecordDeployment, record)
        assert _code(err) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as wrong:  # a made-up internal key is no better
            c.registry.RecordDeployment(record, metadata=[*c.metadata(), internal_header("pyl_internal_guess")])
        assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
        c.registry.RecordDeployment(record, metadata=[*c.metadata(), internal_header(_internal_key(reg))])
        with pytest.raises(PylonError) as err:
            maint.models.delete_version("life", 2)
        assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION and "chat" in str(err.value)
        assert c.models.lineage("life", 2).edges[-1].target == "tenants/acme/deployments/chat"
        c.registry.RecordDeployment(pb.RecordDeploymentRequest(name=record.name, deployment=record.deployment,
                                                               removed=True),
                                    metadata=[*c.metadata(), internal_header(_internal_key(reg))])
        maint.models.delete_version("life", 2)
        assert [v.version for v in list(c.models.versions("life"))] == [3, 1]
        assert [v.state for v in list(c.models.versions("life", show_deleted=True))] == ["ready", "deleted", "ready"]
        archived = c.models.archive("life", 1)
        assert archived.state == "archived"
        with pytest.raises(PylonError) as err:
            c.models.set_alias("life", "canary", 1)
        assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION
        assert c.models.archive("life", 1, restore=True).state == "ready"
        assert c.models.register("life", source_uri="tenants/acme/src/life").version == 4
        with pytest.raises(PylonError) as err:
            maint.models.delete("life")
        assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION


def test_version_updates_are_compare_and_swap(reg: RegistryEnv) -> None:
    reg.store.put("tenants/acme/src/upd/w", b"w")
    with reg.client() as c:
        v = c.models.register("upd", source_uri="tenants/acme/src/upd", tags={"stage": "train"})
        req = pb.UpdateModelVersionRequest(version=pb.ModelVersion(name=v.name, tags={"stage": "eval"}, etag=v.etag),
                                           update_mask=["tags"])
        updated = c.call(c.registry.UpdateModelVersion, req).version
        assert dict(updated.tags) == {"stage": "eval"} and updated.etag != v.etag
        with pytest.raises(PylonError) as err:  # stale etag
            c.call(c.registry.UpdateModelVersion, req)
        assert _code(err) == grpc.StatusCode.ABORTED
        with pytest.raises(PylonError) as err:  # artifacts are immutable
            c.call(c.registry.UpdateModelVersion, pb.UpdateModelVersionRequest(
                version=pb.ModelVersion(name=v.name), update_mask=["files"]))
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT
        assert c.models.get("upd", v.version).digest == v.digest


# -- query ---------------------------------------------------------------------------------------
def test_filters_ordering_pagination_and_search(reg: RegistryEnv) -> None:
    reg.store.put("tenants/acme/src/q/w", b"w")
    with reg.client() as c:
        for i in range(12):
            c.models.register("query", source_uri="tenants/acme/src/q", metrics={"loss": 3.0 - i * 0.2},
                              tags={"stage": "eval" if i % 2 else "train"})
        c.models.set_alias("query", "best", 12)
        c.models.register("other-model", source_uri="tenants/acme/src/q", metrics={"loss": 0.1})
        pages = c.models.versions("query", page_size=5)
        assert [v.version for v in pages] == list(range(12, 0, -1)) and pages.next_page_token == ""
        first = c.models.versions("query", page_size=5, limit=7)
        assert [v.version for v in first] == list(range(12, 5, -1))
        rest = c.models.versions("query", page_size=5, page_token=first.next_page_token)
        assert [v.version for v in rest] == list(range(5, 0, -1))
        low = list(c.models.versions("query", filter="metrics.loss<1.5 AND tags.stage=eval"))
        assert [v.version for v in low] == [12, 10]
        assert [v.version for v in list(c.models.versions("query", filter="alias:best"))] == [12]
        assert list(c.models.versions("query", filter="create_time>2000-01-01", page_size=100))[-1].version == 1
        assert list(c.models.versions("query", filter="create_time>2999-01-01")) == []
        ordered = list(c.models.versions("query", order_by="metrics.loss asc", limit=3))
        assert [v.version for v in ordered] == [12, 11, 10]
        everywhere = list(c.models.versions("-", filter="metrics.loss<1.0", order_by="metrics.loss asc"))
        assert [v.name.split("/")[3] for v in everywhere] == ["other-model", "query"]
        assert "tenants/acme/models/other-model" in [m.name for m in c.models.list(filter="name:other")]


# -- index: rebuild and concurrency --------------------------------------------------------------
def test_reindex_rebuilds_the_index_from_storage(reg: RegistryEnv) -> None:
    reg.store.put("tenants/acme/src/idx/w", b"w")
    with reg.client() as c, reg.client(role="admin") as admin:
        for _ in range(3):
            c.models.register("idx", source_uri="tenants/acme/src/idx")
        c.models.set_alias("idx", "prod", 2)
        before = [json.dumps(v.__dict__, default=str, sort_keys=True) for v in list(c.models.versions("idx"))]
        lost = redis.Redis.from_url(reg.redis_url)
        lost.delete(*lost.keys("pylon:reg:*"))  # the index is gone; storage still has everything
        with pytest.raises(PylonError):
            c.models.get("idx")
        counts = admin.admin.reindex()
        assert counts.versions >= 3 and counts.models >= 1
    with reg.client() as c:
        after = [json.dumps(v.__dict__, default=str, sort_keys=True) for v in list(c.models.versions("idx"))]
        assert after == before
        assert c.models.resolve("models:/idx@prod").version == 2


def _register_in_process(args: tuple[str, str, str, int]) -> int:
    import pylon

    address, token, source, i = args
    with pylon.Client(address, token) as c:
        return c.models.register("crowd", source_uri=source, request_id=f"crowd-{i}").version


def test_64_concurrent_registrations_from_processes_get_1_to_64(reg: RegistryEnv) -> None:
    import multiprocessing

    reg.store.put("tenants/acme/src/crowd/w", b"w")
    with reg.client() as c:
        token = c.token
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(64) as pool:
        versions = pool.map(_register_in_process, [(reg.address, token, "tenants/acme/src/crowd", i) for i in range(64)])
    assert sorted(versions) == list(range(1, 65))
    with reg.client() as c:
        listed = list(c.models.versions("crowd", page_size=100))
        assert [v.version for v in listed] == list(range(64, 0, -1))
        # a retried request gets its original version, not a 65th
        assert c.models.register("crowd", source_uri="tenants/acme/src/crowd", request_id="crowd-7").version == versions[7]


# -- crash safety ----------------------------------------------------------------------------------
def test_sigkill_mid_registration_leaves_no_partial_version(seaweed: Any, redis_server: Any, tmp_path: Any) -> None:
    """Kill -9 the registry while it copies a large registration; after a restart no partial
    version is visible, the index agrees with storage, and the retried request lands once."""
    import time

    from tests.support.registry import RegistryProcess

    conn = s3_connection(seaweed)
    store_url = f"s3://{TEST_BUCKET}/kill-{uuid.uuid4().hex[:8]}"
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/5"
    flush_db(redis_url)
    settings = registry_settings(redis_url, store_url, {"endpoint_url": conn["endpoint_url"],
                                                        "access_key": conn["access_key"], "secret_key": conn["secret_key"]})
    store = open_store(store_url, **conn)
    env = RegistryEnv("", settings, store, redis_url)
    for i in range(300):
        store.put(f"tenants/acme/src/big/shard-{i:03d}.bin", os.urandom(64 << 10))
    proc = RegistryProcess(env).start()
    env.address = f"127.0.0.1:{proc.port}"
    outcome: list[Any] = []

    def register() -> None:
        try:
            with env.client() as c:
                outcome.append(c.models.register("victim", source_uri="tenants/acme/src/big", request_id="kill-1"))
        except PylonError as e:
            outcome.append(e)

    with env.client() as c:  # the model exists before the crash; its first version is mid-flight
        c.models.register("victim", _tree(tmp_path, {"seed.bin": b"v1"}))
    worker = threading.Thread(target=register)
    worker.start()
    time.sleep(1.0)
    proc.kill()
    worker.join(30)
    assert outcome and isinstance(outcome[0], PylonError), "the registration finished before the kill; use more data"
    proc = RegistryProcess(env, port=proc.port).start()
    try:
        prefix = "tenants/acme/models/victim/versions/"

        def stored() -> list[int]:
            return sorted(int(o.key[len(prefix):-5]) for o in store.iter_all(prefix) if o.key[len(prefix):-5].isdigit())

        with env.client() as c:
            deadline = time.time() + 30
            while sorted(v.version for v in list(c.models.versions("victim", page_size=100))) != stored():
                assert time.time() < deadline, "index never caught up with storage"
                time.sleep(0.5)
            for v in list(c.models.versions("victim", page_size=100)):
                for f in v.files:  # every visible version is complete
                    assert store.exists(f["object_key"]), f
            retried = c.models.register("victim", source_uri="tenants/acme/src/big", request_id="kill-1")
            assert len(retried.files) == 300
            again = c.models.register("victim", source_uri="tenants/acme/src/big", request_id="kill-1")
            assert again.version == retried.version
            assert [v.version for v in list(c.models.versions("victim", page_size=100))] == stored() [::-1]
    finally:
        proc.stop()


def test_deleted_versions_keep_artifacts_until_retention_then_purge(reg: RegistryEnv, tmp_path: Any) -> None:
    import redis as redis_lib

    from pylon_services.registry.domain import retention
    from pylon_services.registry.store.redis_index import RedisRegistryIndex

    with reg.client() as c, reg.client(role="maintainer") as maint:
        shared = c.models.register("retained", _tree(tmp_path / "a", {"shared.bin": b"shared", "own.bin": b"only v1"}))
        keep = c.models.register("retained", _tree(tmp_path / "b", {"shared.bin": b"shared"}))
        maint.models.delete_version("retained", shared.version)
        index = RedisRegistryIndex(redis_lib.Redis.from_url(reg.redis_url))
        keys = {f["path"]: f["object_key"] for f in shared.files}
        assert retention.purge_expired(reg.store, index, retention_s=3600)["objects"] == 0  # still retained
        assert reg.store.exists(keys["own.bin"])
        counts = retention.purge_expired(reg.store, index, retention_s=0)  # other tests' deletions count too
        assert counts["versions"] >= 1 and counts["objects"] >= 1
        assert not reg.store.exists(keys["own.bin"])
        assert reg.store.exists(keys["shared.bin"])  # still used by the live version
        out = c.models.download(f"models:/retained/versions/{keep.version}", str(tmp_path / "out"))
        assert open(os.path.join(out, "shared.bin"), "rb").read() == b"shared"
        assert [v.version for v in list(c.models.versions("retained", show_deleted=True))] == [keep.version, shared.version]


def test_abandoned_upload_sessions_are_discarded_but_live_blobs_kept(reg: RegistryEnv, tmp_path: Any) -> None:
    import time

    import redis as redis_lib

    from pylon_services.registry.domain import artifacts, retention
    from pylon_services.registry.store.redis_index import RedisRegistryIndex

    index = RedisRegistryIndex(redis_lib.Redis.from_url(reg.redis_url))
    big = os.urandom((5 << 20) + 1)  # multipart: an unfinished multipart upload is left behind too
    with reg.client() as c:
        kept = c.models.register("gc", _tree(tmp_path / "kept", {"w.bin": b"registered"}))

        def open_session(files: dict[str, bytes]) -> Any:
            session = c.call(c.registry.CreateArtifactUpload, pb.CreateArtifactUploadRequest(
                parent="tenants/-/models/gc", part_size=5 << 20,
                files=[pb.ArtifactFile(path=p, digest=_digest(d), size_bytes=len(d)) for p, d in files.items()]))
            c.models._send(session, {p: _tree(tmp_path / p, {p: d}) + "/" + p for p, d in files.items()},
                           {p: len(d) for p, d in files.items()}, 2, None)
            return artifacts.load_upload(reg.store, "acme", session.upload.rsplit("/", 1)[1])

        abandoned = open_session({"small.bin": b"never registered", "big.bin": big})
        # A session whose registration wrote its manifest, then died before closing the session:
        # its staged object is the live blob of a version and must survive.
        crashed = open_session({"live.bin": b"live bytes"})
        live = c.call(c.registry.CreateModelVersion, pb.CreateModelVersionRequest(
            parent="tenants/-/models/gc", format=pb.MODEL_FORMAT_OTHER, upload=f"tenants/acme/models/gc/uploads/{crashed.id}",
            files=[pb.ArtifactFile(path="live.bin", digest=_digest(b"live bytes"), size_bytes=10)])).version
        reg.store.put(f"tenants/acme/uploads/{crashed.id}.json", json.dumps(
            {"part_size": crashed.part_size, "files": crashed.files, "create_time": time.time()}).encode())
        assert reg.store.exists(abandoned.files["small.bin"]["key"])  # staged; big.bin is an open multipart upload
        assert retention.purge_abandoned_uploads(reg.store, index) == 0  # young sessions are left alone
        assert retention.purge_abandoned_uploads(reg.store, index, older_than_s=0, now=time.time() + 1) >= 2
        assert not any(reg.store.exists(e["key"]) for e in abandoned.files.values())
        assert not reg.store.exists(f"tenants/acme/uploads/{abandoned.id}.json")
        assert reg.store.exists(live.files[0].object_key)  # the live blob stayed
        out = c.models.download(live.name.split("/versions/")[0].replace("tenants/acme/models/", "models:/")
                                + f"/versions/{live.version}", str(tmp_path / "out"))
        assert open(os.path.join(out, "live.bin"), "rb").read() == b"live bytes"
        assert c.models.get("gc", kept.version).version == kept.version


def test_cli_register_alias_history_versions_download(reg: RegistryEnv, tmp_path: Any) -> None:
    import subprocess
    import sys

    with reg.client() as c:
        token = c.token
    env = dict(os.environ, PYLON_ADDRESS=reg.address, PYLON_TOKEN=token, PYLON_CACHE_DIR=str(tmp_path / "cache"))

    def pylon(*args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "pylon.cli", *args], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if "--json" in args else out.stdout

    src = _tree(tmp_path / "m", {"config.json": b"{}", "model.safetensors": b"weights"})
    v = pylon("models", "import", "cli-model", src, "--json")
    assert v["format"] == "hf_transformers" and v["version"] == 1
    pylon("models", "register", "cli-model", src, "--metric", "loss=1.5", "--tag", "stage=eval", "--json")
    assert pylon("models", "alias", "set", "cli-model", "prod", "2", "--json")["version"] == 2
    assert [m["to_version"] for m in pylon("models", "alias", "history", "cli-model", "prod", "--json")] == [2]
    found = pylon("models", "versions", "cli-model", "--filter", "metrics.loss<2 AND tags.stage=eval", "--json")
    assert [x["version"] for x in found] == [2]
    out = pylon("models", "download", "models:/cli-model@prod", "--dest", str(tmp_path / "dl"), "-q").strip()
    assert open(os.path.join(out, "model.safetensors"), "rb").read() == b"weights"
    bad = subprocess.run([sys.executable, "-m", "pylon.cli", "models", "alias", "set", "cli-model", "prod", "9"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not found" in bad.stderr
