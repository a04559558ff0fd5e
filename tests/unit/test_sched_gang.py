"""gang=false: when no single GPU type holds every worker, the workers may be split over the
acceptable types (each placed where it fits), with the queue's quota checked per type and
reserved as a unit; a gang job keeps all-or-nothing on one type. A split job's throughput is
its slowest worker's; its GPUs are charged to each type it holds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from pylon_services.scheduler.domain.explain import estimated_finish, gpus_by_type, running_rate
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.placement import check_satisfiable
from pylon_services.scheduler.domain.policies import make_policy
from pylon_services.scheduler.domain.quota import QuotaLedger
from pylon_services.scheduler.domain.scheduling import Demand, QueueQuota
from pylon_services.scheduler.domain.snapshot import pending_of, running_of
from pylon_services.scheduler.domain.spec import JobSpec
from pylon_services.scheduler.domain.throughput import ThroughputTable
from tests.unit.sched_helpers import nodes, pending, running, snapshot

Q = "tenants/acme/queues/default"


def _split_job(job_id: str = "s", workers: int = 2, **kw) -> object:
    return replace(pending(job_id, workers=workers, gpus=1, types=("V100", "P100"), **kw), gang=False)


def _half_busy():
    """One V100 node and one P100 node of 2 GPUs each, one GPU of each already taken."""
    return nodes({"V100": (1, 2), "P100": (1, 2)}), [running("v", "V100", ("V100-0",)), running("p", "P100", ("P100-0",))]


@pytest.mark.parametrize("policy", ["fifo", "fair-share", "gavel", "finish-time-fairness"])
def test_gang_false_job_is_split_over_two_types_when_neither_has_room(policy):
    ns, run = _half_busy()
    d = make_policy(policy).schedule(snapshot(ns, [_split_job()], run))
    assert len(d.admits) == 1
    a = d.admits[0]
    assert sorted(a.worker_gpu_types) == ["P100", "V100"] and sorted(a.nodes) == ["P100-0", "V100-0"]
    assert a.types() == a.worker_gpu_types and a.gpu_type == a.worker_gpu_types[0]


def test_the_same_job_as_a_gang_stays_pending_and_explain_says_why():
    ns, run = _half_busy()
    gang = pending("g", workers=2, gpus=1, types=("V100", "P100"))
    d = make_policy("fifo").schedule(snapshot(ns, [gang], run))
    assert d.admits == []
    assert "a gang of 2 workers x 1 GPUs on one of [V100, P100]" in d.explanations["g"].reason
    assert "largest free set is 1 workers" in d.explanations["g"].reason


def test_gang_false_prefers_one_type_when_one_type_holds_every_worker():
    d = make_policy("fifo").schedule(snapshot(nodes({"V100": (1, 2), "P100": (1, 2)}), [_split_job()]))
    assert d.admits[0].worker_gpu_types == () and d.admits[0].gpu_type == "V100"  # first preference, unsplit


def test_gang_false_admits_all_workers_or_none_and_says_how_many_fit():
    ns, run = _half_busy()
    d = make_policy("fifo").schedule(snapshot(ns, [_split_job(workers=3)], run))
    assert d.admits == []
    why = d.explanations["s"].reason
    assert "3 workers x 1 GPUs (gang=false: any mix) of [V100, P100]" in why and "only 2 workers fit" in why


def test_split_respects_each_types_quota_as_one_reservation():
    ns, run = _half_busy()
    queues = {Q: QueueQuota(Q, "acme", {"V100": 2, "P100": 1})}  # P100 quota already used by "p"
    d = make_policy("fifo").schedule(snapshot(ns, [_split_job()], run, queues=queues))
    assert d.admits == []  # one worker would fit the V100 quota, but the job is reserved whole
    queues = {Q: QueueQuota(Q, "acme", {"V100": 2, "P100": 2})}
    d = make_policy("fifo").schedule(snapshot(ns, [_split_job()], run, queues=queues))
    assert sorted(d.admits[0].worker_gpu_types) == ["P100", "V100"]


def test_a_running_split_job_charges_quota_and_frees_capacity_per_type():
    split = replace(running("s", "V100", ("V100-0", "P100-0")), worker_gpu_types=("V100", "P100"))
    ledger = QuotaLedger({Q: QueueQuota(Q, "acme", {"V100": 1, "P100": 1})}, [split])
    assert ledger.used[(Q, "V100")] == 1 and ledger.used[(Q, "P100")] == 1
    assert gpus_by_type(split) == {"V100": 1.0, "P100": 1.0}
    # A 1-GPU job on P100 behind it: the release timeline counts the split job's P100 GPU.
    snap = snapshot(nodes({"V100": (1, 1), "P100": (1, 1)}), [pending("n", gpus=1, types=("P100",))], [split])
    d = make_policy("fifo").schedule(snap)
    assert d.admits == [] and "no node has that much free" in d.explanations["n"].reason


def test_a_split_jobs_rate_is_its_slowest_workers():
    table = ThroughputTable()
    table.set("m", "V100", 4.0)
    table.set("m", "P100", 1.0)
    split = replace(running("s", "V100", ("V100-0", "P100-0"), work=200.0), worker_gpu_types=("V100", "P100"))
    assert running_rate(table, split) == 2.0  # 1 step/s per worker (P100) x 2 workers
    assert estimated_finish(split, table, 0.0) == 100.0
    whole = running("w", "V100", ("V100-0", "V100-0"), work=200.0)
    assert running_rate(table, whole) == 8.0


def test_snapshot_reads_gang_from_the_spec_unset_meaning_true():
    spec = {"workers": 2, "resources": {"gpus": 1}, "command": {"argv": ["true"]}}

    def job(job_id: str, d: dict, **kw) -> Job:
        return Job(job_id, "acme", JobSpec.from_dict(d), **kw)

    assert pending_of(job("a", dict(spec))).gang is True
    assert pending_of(job("b", {**spec, "gang": True})).gang is True
    assert pending_of(job("c", {**spec, "gang": False})).gang is False
    split = job("d", {**spec, "gang": False}, gpu_type="V100", nodes=["n1", "n2"], worker_gpu_types=["V100", "P100"])
    assert running_of(split, 0.0).worker_gpu_types == ("V100", "P100")
    assert split.worker_gpu_type(1) == "P100" and job("e", spec, gpu_type="K80").worker_gpu_type(1) == "K80"


def test_submit_check_lets_a_gang_false_job_span_pools_but_not_a_gang():
    ns = nodes({"V100": (1, 2), "P100": (1, 2)})
    assert "gang of 3" in (check_satisfiable(Demand(3, 1, 1.0, 0, ("V100", "P100")), ns) or "")
    assert check_satisfiable(Demand(3, 1, 1.0, 0, ("V100", "P100"), gang=False), ns) is None
    why = check_satisfiable(Demand(5, 1, 1.0, 0, ("V100", "P100"), gang=False), ns)
    assert why is not None and "5 workers but the acceptable pools together hold 4" in why


def test_yaml_spec_accepts_gang_false_and_unset_means_true():
    from google.protobuf import json_format

    from pylon.scheduler.v1 import scheduler_pb2

    off = json_format.ParseDict(yaml.safe_load("workers: 2\ngang: false\n"), scheduler_pb2.JobSpec())
    unset = json_format.ParseDict(yaml.safe_load("workers: 2\n"), scheduler_pb2.JobSpec())
    assert off.HasField("gang") and off.gang is False and not unset.HasField("gang")
    from pylon_services.scheduler.api.convert import spec_from_pb

    off.command.argv.append("true")
    unset.command.argv.append("true")
    assert spec_from_pb(off).demand().gang is False and spec_from_pb(unset).demand().gang is True
