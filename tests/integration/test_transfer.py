"""The SDK's transfer module against a real S3 server (SeaweedFS) through presigned URLs."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

from pylon import transfer


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_multipart_upload_then_resumed_download(s3_store: Any, tmp_path: Any) -> None:
    data = os.urandom((12 << 20) + 123)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    part = 5 << 20
    upload_id = s3_store.create_multipart("blob")
    urls = {n: s3_store.presign("PUT", "blob", upload_id=upload_id, part_number=n)
            for n, _, _ in transfer.part_ranges(len(data), part)}
    first = transfer.upload_parts(str(src), part, {1: urls[1]})  # an interrupted upload: one part sent
    assert [p.part_number for p in s3_store.list_parts("blob", upload_id)] == [1]
    rest = transfer.upload_parts(str(src), part, {n: u for n, u in urls.items() if n != 1}, concurrency=4)
    from pylon_services.storage.base import CompletedPart

    s3_store.complete_multipart("blob", upload_id, [CompletedPart(n, e) for n, e in sorted({**first, **rest}.items())])
    assert s3_store.get("blob") == data

    # an interrupted download: part 1 is on disk and recorded; only the rest is fetched
    url = s3_store.presign("GET", "blob")
    dest = tmp_path / "out.bin"
    partial = tmp_path / "out.bin.part"
    partial.write_bytes(data[:part] + b"\0" * (len(data) - part))
    (tmp_path / "out.bin.part.json").write_text(json.dumps({"part_size": part, "sha256": _sha(data), "done": [1]}))
    moved: list[int] = []
    transfer.download(url, str(dest), size=len(data), sha256=_sha(data), part_size=part, progress=moved.append)
    assert dest.read_bytes() == data
    assert sum(moved) - part == len(data) - part  # the resumed part is reported once, then only new bytes
    assert not partial.exists()


def test_download_with_wrong_digest_is_refused(s3_store: Any, tmp_path: Any) -> None:
    s3_store.put("x", b"payload")
    with pytest.raises(transfer.TransferError, match="hash to"):
        transfer.download(s3_store.presign("GET", "x"), str(tmp_path / "x"), size=7, sha256=_sha(b"other"))
    assert not (tmp_path / "x").exists()


def test_download_checked_by_crc32c(s3_store: Any, tmp_path: Any) -> None:
    import google_crc32c

    data = os.urandom((6 << 20) + 7)
    s3_store.put("c", data)
    url = s3_store.presign("GET", "c")
    crc = google_crc32c.value(data)
    out = transfer.download(url, str(tmp_path / "ok"), size=len(data), sha256=_sha(data), crc32c=crc, part_size=5 << 20)
    assert open(out, "rb").read() == data
    with pytest.raises(transfer.TransferError, match=f"expected crc32c:{crc ^ 1}"):
        transfer.download(url, str(tmp_path / "bad"), size=len(data), sha256=_sha(data), crc32c=crc ^ 1,
                          part_size=5 << 20)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.part").exists()


def test_hash_cache_skips_rehashing_unchanged_files(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    calls: list[int] = []
    assert transfer.hash_file(str(f), progress=calls.append).sha256 == _sha(b"abc") and calls == [3]
    assert transfer.hash_file(str(f), progress=calls.append).sha256 == _sha(b"abc") and calls == [3]
    f.write_bytes(b"abcd")  # changed size/mtime: hashed again
    assert transfer.hash_file(str(f), progress=calls.append).sha256 == _sha(b"abcd")


def test_download_of_a_missing_object_fails_cleanly(s3_store: Any, tmp_path: Any) -> None:
    with pytest.raises(transfer.TransferError, match="HTTP 404"):
        transfer.download(s3_store.presign("GET", "nope"), str(tmp_path / "nope"), size=40 << 20, sha256="",
                          part_size=16 << 20)
    assert not (tmp_path / "nope").exists()
