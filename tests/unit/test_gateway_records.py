"""The deployment record's pure changes: scaling by slots, etags, and settling submitted jobs."""

from __future__ import annotations

import dataclasses

import pytest

from pylon_services.common.errors import Aborted, FailedPrecondition, InvalidArgument
from pylon_services.gateway.domain import deployments as rec
from pylon_services.gateway.domain.deployments import DeploymentRecord, Slot


def _record(replicas: int = 1) -> DeploymentRecord:
    r = rec.new_record("tenants/acme/deployments/chat", "u1", replicas, model_version="v")
    return dataclasses.replace(r, version=1)


def _jobs(r: DeploymentRecord) -> list[tuple[int, str]]:
    return [(s.index, s.job) for s in r.slots]


def test_replicas_must_be_in_range_and_name_the_field():
    assert rec.check_replicas("replicas", 16) == 16
    for bad in (0, -1, 17):
        with pytest.raises(InvalidArgument) as e:
            rec.check_replicas("replicas", bad)
        assert [v.field for v in e.value.violations] == ["replicas"]


def test_scaling_up_adds_fresh_indexes_and_down_retires_the_highest():
    r = rec.record_jobs(_record(2), {0: "j0", 1: "j1"})
    up = rec.resize(r, 4)
    assert _jobs(up) == [(0, "j0"), (1, "j1"), (2, ""), (3, "")] and rec.unsubmitted(up) == [2, 3]
    up = rec.record_jobs(up, {2: "j2", 3: "j3"})
    down = rec.resize(up, 1)
    assert _jobs(down) == [(0, "j0")]
    assert rec.to_cancel(down, {}) == {"j1", "j2", "j3"}
    assert rec.drop_retired(down, {"j1", "j2", "j3"}).retired == ()
    # indexes are never reused: the request id of a slot names one job forever
    again = rec.resize(rec.drop_retired(down, {"j1", "j2", "j3"}), 2)
    assert _jobs(again) == [(0, "j0"), (4, "")]
    assert again.request_id_of(4) == "u1-r4"
    assert r.slots == (Slot(0, "j0"), Slot(1, "j1"))  # records are values: inputs never change


def test_stale_etag_and_deleting_records_refuse_a_resize():
    r = _record(1)
    assert r.etag == "u1-1"
    with pytest.raises(Aborted, match="changed since etag"):
        rec.resize(r, 2, expected_etag="u1-0")
    assert rec.resize(r, 2, expected_etag="u1-1").replicas == 2
    gone = rec.retire_all(r)
    assert gone.slots == () and gone.deleting
    with pytest.raises(FailedPrecondition):
        rec.resize(gone, 2)


def test_a_job_submitted_for_a_slot_retired_meanwhile_is_cancelled():
    r = rec.resize(rec.record_jobs(_record(1), {0: "j0"}), 2)  # slot 1 waits for its job
    # a concurrent scale-down retired slot 1, and another gateway already cancelled and dropped it
    shrunk = dataclasses.replace(rec.resize(r, 1), retired=())
    settled = rec.record_jobs(shrunk, {1: "j1"})
    assert _jobs(settled) == [(0, "j0")]
    assert rec.to_cancel(settled, {1: "j1"}) == {"j1"}
    # a retired slot without a job gets its name recorded, so the job is cancelled
    retired = rec.record_jobs(rec.resize(r, 1), {1: "j1"})
    assert rec.to_cancel(retired, {1: "j1"}) == {"j1"}


def test_records_round_trip_and_records_from_before_slots_read_as_slots():
    r = rec.record_jobs(_record(2), {0: "tenants/acme/jobs/j0"})
    assert DeploymentRecord.from_dict(r.to_dict()) == r
    old = DeploymentRecord.from_dict({"name": "tenants/a/deployments/d", "uid": "u", "replicas": 2,
                                      "jobs": ["j0", "j1"]})
    assert _jobs(old) == [(0, "j0"), (1, "j1")]
    assert (old.next_index, old.retired, old.version, old.deleting) == (2, (), 0, False)
