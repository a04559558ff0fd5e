"""Pure rules of the ingest service: upload plans, commit-time part checks, operation attempts,
processing options."""

from __future__ import annotations

import pytest

from pylon_services.common.errors import InvalidArgument
from pylon_services.ingest.domain import operations, uploads
from pylon_services.ingest.domain.service import processing_options
from pylon_services.ingest.domain.versions import cleaning_steps
from pylon_services.storage.base import CompletedPart

MiB = 1 << 20
SHA = "sha256:" + "a" * 64


def session(size: int, part_size: int = 5 * MiB, md5s: list[str] | None = None) -> uploads.UploadSession:
    n = uploads.part_count(size, part_size)
    return uploads.UploadSession(id="up1", tenant="acme", dataset="d", path="f.jsonl", format="jsonl",
                                 compression="", digest=SHA, size=size, part_size=part_size,
                                 part_md5s=md5s if md5s is not None else [f"{i:032x}" for i in range(n)],
                                 staging_key="k", upload_id="u", already_stored=False, processing={})


def test_plan_validates_digest_part_size_and_md5s():
    assert uploads.check_plan(12 * MiB, SHA, 5 * MiB, ["0" * 32] * 3) == 5 * MiB
    assert uploads.part_count(0, 5 * MiB) == 1 and uploads.part_count(10 * MiB, 5 * MiB) == 2
    for args, field in (((1, "sha256:xyz", 5 * MiB, []), "header.digest"),
                        ((1, SHA, MiB, []), "part_size_bytes"),
                        ((10 * MiB, SHA, 5 * MiB, ["0" * 32]), "part_md5s"),
                        ((1, SHA, 5 * MiB, ["XYZ"]), "part_md5s[0]"),
                        ((60_000 * 5 * MiB, SHA, 5 * MiB, []), "part_size_bytes")):
        with pytest.raises(InvalidArgument) as e:
            uploads.check_plan(*args)
        assert e.value.violations[0].field == field


def test_commit_checks_every_part_against_its_declared_md5():
    s = session(11 * MiB)  # 3 parts
    good = [CompletedPart(i + 1, f'"{i:032x}"') for i in range(3)]
    assert [p.part_number for p in uploads.check_parts(s, list(reversed(good)))] == [1, 2, 3]
    with pytest.raises(InvalidArgument, match="2 of 3 parts not uploaded yet: 2, 3"):
        uploads.check_parts(s, good[:1])
    with pytest.raises(InvalidArgument, match=r"parts\[2\].*corrupted or truncated"):
        uploads.check_parts(s, [good[0], CompletedPart(2, "f" * 32), good[2]])
    with pytest.raises(InvalidArgument, match="beyond the declared size"):
        uploads.check_parts(s, [*good, CompletedPart(4, "0" * 32)])
    # Without declared MD5s only presence is checked (the sha256 is checked while processing).
    assert len(uploads.check_parts(session(11 * MiB, md5s=[]), [CompletedPart(i, "x") for i in (1, 2, 3)])) == 3
    with pytest.raises(InvalidArgument, match="truncated or padded"):
        uploads.check_size(s, 11 * MiB - 1)


def test_operation_attempts_end_in_failed_with_reason():
    op = operations.new_operation("acme", "process", "tenants/acme/datasets/d", {})
    assert op.name.startswith("tenants/acme/operations/op") and not op.done
    for attempt in range(1, operations.MAX_ATTEMPTS + 1):
        assert operations.next_attempt(op) and op.attempts == attempt and op.state == operations.RUNNING
    assert not operations.next_attempt(op)
    assert op.done and op.error_code == "ABORTED" and "giving up" in op.error_message
    assert operations.Operation.from_dict(op.to_dict()) == op


def test_processing_options_fill_defaults_and_keep_explicit_false():
    p = processing_options({"recipe": {"dedupe": False, "normalize_unicode": "none"}})
    assert p["recipe"]["dedupe"] is False and p["recipe"]["normalize_unicode"] == ""
    assert p["recipe"]["normalize_whitespace"] is True and p["max_reject_rate"] == 0.1
    assert cleaning_steps(p["recipe"]) == ["normalize_whitespace", "length:1..1000000"]
    with pytest.raises(InvalidArgument, match="max_reject_rate"):
        processing_options({"max_reject_rate": 1.5})
    with pytest.raises(InvalidArgument, match="normalize_unicode"):
        processing_options({"recipe": {"normalize_unicode": "NFX"}})
