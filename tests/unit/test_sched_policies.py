"""Heterogeneity-aware placement, the throughput table, and the policies behind one interface."""

import json
from pathlib import Path

import pytest

from pylon_services.scheduler.domain.policies import POLICIES, make_policy
from pylon_services.scheduler.domain.scheduling import Policy
from pylon_services.scheduler.domain.throughput import ThroughputTable
from tests.unit.sched_helpers import nodes, pending, running, snapshot

DATA = Path(__file__).resolve().parents[1] / "data" / "gavel"


def _table() -> ThroughputTable:
    t = ThroughputTable()
    for gpu, rates in {"V100": {"resnet": 10.0, "a3c": 2.0}, "K80": {"resnet": 1.0, "a3c": 1.6}}.items():
        for job, r in rates.items():
            t.set(job, gpu, r)
    return t


def test_throughput_table_loads_gavel_profiles_per_worker():
    t = ThroughputTable.from_gavel(json.loads((DATA / "throughputs_isolated.json").read_text()))
    assert t.rate("ResNet-50 (batch size 64)", "v100") > 3 * t.rate("ResNet-50 (batch size 64)", "k80")
    whole = json.loads((DATA / "throughputs_isolated.json").read_text())["v100"]["('ResNet-18 (batch size 64)', 4)"]
    assert t.rate("ResNet-18 (batch size 64) x4", "v100") == pytest.approx(whole["null"] / 4)
    assert t.rate("nope", "v100") is None
    assert set(t.gpu_types()) == {"k80", "p100", "v100"}


def test_throughput_table_ewma_update_and_dict_round_trip():
    t = ThroughputTable(alpha=0.5)
    assert t.observe("m", "V100", 10.0) == 10.0
    assert t.observe("m", "V100", 20.0) == 15.0
    assert t.observe("m", "V100", 0.0) == 15.0  # a stalled report says nothing about the hardware
    back = ThroughputTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.rate("m", "V100") == 15.0 and back.alpha == 0.5
    with pytest.raises(ValueError):
        t.set("m", "K80", -1)


def test_all_policies_implement_the_one_interface():
    assert set(POLICIES) == {"fifo", "fair-share", "gavel", "finish-time-fairness"}
    for name in POLICIES:
        policy: Policy = make_policy(name)
        assert policy.name == name
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("random")


def test_gavel_gives_the_fast_type_to_the_job_that_gains_most():
    # One V100 and one K80 free; resnet is 10x faster on V100, a3c only 1.25x.
    pend = [pending("a3c-job", job_type="a3c", t=0), pending("resnet-job", job_type="resnet", t=1)]
    snap = snapshot(nodes({"V100": (1, 1), "K80": (1, 1)}), pend, table=_table())
    gavel = {a.job_id: a.gpu_type for a in make_policy("gavel").schedule(snap).admits}
    assert gavel == {"a3c-job": "K80", "resnet-job": "V100"}  # max-min: 0.8 and 1.0, not 1.0 and 0.1
    # With resnet first in line, the type-agnostic policy hands it the K80 (alphabetical tie).
    swapped = snapshot(nodes({"V100": (1, 1), "K80": (1, 1)}), [pending("resnet-job", job_type="resnet", t=0),
                       pending("a3c-job", job_type="a3c", t=1)], table=_table())
    agnostic = {a.job_id: a.gpu_type for a in make_policy("fair-share").schedule(swapped).admits}
    assert agnostic == {"resnet-job": "K80", "a3c-job": "V100"}
    aware = {a.job_id: a.gpu_type for a in make_policy("gavel").schedule(swapped).admits}
    assert aware == {"resnet-job": "V100", "a3c-job": "K80"}


def test_gavel_declines_a_slow_type_when_waiting_finishes_sooner_and_says_so():
    # V100 busy until t=10; resnet (work 100) would take 100 s on K80 but 10 + 10 s on the V100.
    run = [running("r", "V100", ("V100-0",), job_type="resnet", work=100)]
    snap = snapshot(nodes({"V100": (1, 1), "K80": (1, 1)}), [pending("p", job_type="resnet", work=100)], run,
                    table=_table())
    d = make_policy("gavel").schedule(snap)
    assert d.admits == []
    e = d.explanations["p"]
    assert "waiting for V100" in e.reason and "10.0x slower on K80" in e.reason
    assert e.estimated_start == 10.0
    # Type-agnostic policies take the K80 at once.
    assert [(a.job_id, a.gpu_type) for a in make_policy("fair-share").schedule(snap).admits] == [("p", "K80")]


def test_every_policy_respects_acceptable_gpu_types():
    pend = [pending("k80-only", job_type="resnet", types=("K80",))]
    snap = snapshot(nodes({"V100": (2, 1), "K80": (1, 1)}), pend, table=_table())
    for name in POLICIES:
        assert [(a.gpu_type) for a in make_policy(name).schedule(snap).admits] == ["K80"], name
    busy = snapshot(nodes({"V100": (2, 1), "K80": (1, 1)}), pend, [running("x", "K80", ("K80-0",))], table=_table())
    for name in POLICIES:
        d = make_policy(name).schedule(busy)
        assert d.admits == [] and "on K80" in d.explanations["k80-only"].reason, name


def test_fifo_is_type_agnostic_and_uses_the_pool_with_most_free_gpus():
    snap = snapshot(nodes({"V100": (1, 1), "K80": (3, 1)}), [pending("p", job_type="resnet")], table=_table())
    assert make_policy("fifo").schedule(snap).admits[0].gpu_type == "K80"
    assert make_policy("gavel").schedule(snap).admits[0].gpu_type == "V100"


def test_finish_time_fairness_serves_the_worst_off_job_first():
    # Both waited 100 s; the short job's ratio (100+10)/10 beats the long one's (100+1000)/1000.
    pend = [pending("long", t=0, work=1000), pending("short", t=0, work=10)]
    snap = snapshot(nodes({"V100": (1, 1)}), pend, now=100.0)
    assert [a.job_id for a in make_policy("finish-time-fairness").schedule(snap).admits] == ["short"]
    assert [a.job_id for a in make_policy("fifo").schedule(snap).admits] == ["long"]


def test_estimated_start_queues_behind_jobs_ahead():
    run = [running(f"r{i}", "V100", (f"V100-{i}",), work=10.0 * (i + 1)) for i in range(3)]
    pend = [pending(f"p{i}", t=i) for i in range(4)]
    d = make_policy("fifo").schedule(snapshot(nodes({"V100": (3, 1)}), pend, run))
    assert [d.explanations[f"p{i}"].estimated_start for i in range(4)] == [10.0, 20.0, 30.0, 0.0]
    assert [d.explanations[f"p{i}"].position for i in range(4)] == [1, 2, 3, 4]


def test_gavel_migrates_a_long_job_to_a_much_faster_free_type_only_when_it_pays():
    from pylon_services.scheduler.domain.scheduling import Preempt

    ns = nodes({"V100": (1, 1), "K80": (1, 1)})
    long_run = [running("slow", "K80", ("K80-0",), job_type="resnet", work=36_000)]  # 10 h left on K80
    d = make_policy("gavel").schedule(snapshot(ns, [], long_run, table=_table()))
    assert d.preempts == [Preempt("slow", "slow", "migrate")]
    short_run = [running("slow", "K80", ("K80-0",), job_type="resnet", work=600)]  # saves 9 min: not worth it
    assert make_policy("gavel").schedule(snapshot(ns, [], short_run, table=_table())).preempts == []
    a3c = [running("a3c", "K80", ("K80-0",), job_type="a3c", work=1e6)]  # only 1.25x faster on V100
    assert make_policy("gavel").schedule(snapshot(ns, [], a3c, table=_table())).preempts == []
    assert make_policy("gavel", migration=False).schedule(snapshot(ns, [], long_run, table=_table())).preempts == []
