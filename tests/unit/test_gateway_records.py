"""The deployment record's pure changes: scaling by slots, etags, and settling submitted jobs."""

from __future__ import annotations

import pytest

from pylon_services.common.errors import Aborted, FailedPrecondition, InvalidArgument
from pylon_services.gateway.domain import deployments as rec


def _record(replicas: int = 1) -> rec.Doc:
    doc = rec.new_record("tenants/acme/deployments/chat", "u1", replicas, {"model_version": "v"})
    doc["version"] = 1
    return doc


def _jobs(doc: rec.Doc) -> list[tuple[int, str]]:
    return [(s["index"], s["job"]) for s in doc["slots"]]


def test_replicas_must_be_in_range_and_name_the_field():
    assert rec.check_replicas("replicas", 16) == 16
    for bad in (0, -1, 17):
        with pytest.raises(InvalidArgument) as e:
            rec.check_replicas("replicas", bad)
        assert [v.field for v in e.value.violations] == ["replicas"]


def test_scaling_up_adds_fresh_indexes_and_down_retires_the_highest():
    doc = rec.record_jobs(_record(2), {0: "j0", 1: "j1"})
    up = rec.resize(doc, 4)
    assert _jobs(up) == [(0, "j0"), (1, "j1"), (2, ""), (3, "")] and rec.unsubmitted(up) == [2, 3]
    up = rec.record_jobs(up, {2: "j2", 3: "j3"})
    down = rec.resize(up, 1)
    assert _jobs(down) == [(0, "j0")]
    assert rec.to_cancel(down, {}) == {"j1", "j2", "j3"}
    assert rec.drop_retired(down, {"j1", "j2", "j3"})["retired"] == []
    # indexes are never reused: the request id of a slot names one job forever
    again = rec.resize(rec.drop_retired(down, {"j1", "j2", "j3"}), 2)
    assert _jobs(again) == [(0, "j0"), (4, "")]
    assert rec.request_id(again, 4) == "u1-r4"
    assert doc["slots"] == [{"index": 0, "job": "j0"}, {"index": 1, "job": "j1"}]  # inputs are not mutated


def test_stale_etag_and_deleting_records_refuse_a_resize():
    doc = _record(1)
    assert rec.etag(doc) == "u1-1"
    with pytest.raises(Aborted, match="changed since etag"):
        rec.resize(doc, 2, expected_etag="u1-0")
    assert rec.resize(doc, 2, expected_etag="u1-1")["replicas"] == 2
    gone = rec.retire_all(doc)
    assert gone["slots"] == [] and gone["deleting"]
    with pytest.raises(FailedPrecondition):
        rec.resize(gone, 2)


def test_a_job_submitted_for_a_slot_retired_meanwhile_is_cancelled():
    doc = rec.resize(rec.record_jobs(_record(1), {0: "j0"}), 2)  # slot 1 waits for its job
    shrunk = rec.drop_retired(rec.resize(doc, 1), set())  # a concurrent scale-down retired slot 1 ...
    shrunk["retired"] = []  # ... and another gateway already cancelled and dropped it
    settled = rec.record_jobs(shrunk, {1: "j1"})
    assert _jobs(settled) == [(0, "j0")]
    assert rec.to_cancel(settled, {1: "j1"}) == {"j1"}
    # a retired slot without a job gets its name recorded, so the job is cancelled
    retired = rec.record_jobs(rec.resize(doc, 1), {1: "j1"})
    assert rec.to_cancel(retired, {1: "j1"}) == {"j1"}


def test_records_from_before_slots_read_as_slots():
    old = {"name": "tenants/a/deployments/d", "uid": "u", "replicas": 2, "jobs": ["j0", "j1"]}
    doc = rec.normalized(old)
    assert _jobs(doc) == [(0, "j0"), (1, "j1")]
    assert (doc["next_index"], doc["retired"], doc["version"], doc["deleting"]) == (2, [], 0, False)
