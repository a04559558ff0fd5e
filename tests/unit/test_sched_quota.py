"""Quotas, cohorts, borrowing, reclaim, priority preemption, fair share and backfill."""

from pylon_services.scheduler.domain.policies import make_policy
from pylon_services.scheduler.domain.scheduling import Preempt, QueueQuota
from tests.unit.sched_helpers import nodes, pending, running, snapshot

ACME = "tenants/acme/queues/default"
BETA = "tenants/beta/queues/default"


def _queues(cohort: str = "", acme_v100: float = 8, beta_v100: float = 8, limit: dict | None = None):
    return {
        ACME: QueueQuota(ACME, "acme", {"V100": acme_v100}, cohort, limit or {}),
        BETA: QueueQuota(BETA, "beta", {"V100": beta_v100}, cohort),
    }


def test_over_quota_without_cohort_is_not_admitted_and_says_which_queue_type_and_numbers():
    run = [running(f"r{i}", "V100", (f"V100-{i}",), gpus=4) for i in range(2)]
    snap = snapshot(nodes({"V100": (4, 4)}), [pending("p", gpus=4, types=("V100",))], run,
                    queues=_queues(cohort=""))
    d = make_policy("fair-share").schedule(snap)
    assert d.admits == []
    reason = d.explanations["p"].reason
    assert "queue tenants/acme/queues/default is at its nominal quota on V100 (8/8 GPUs" in reason
    assert "no cohort" in reason


def test_over_quota_with_cohort_that_has_nothing_to_lend():
    run = [running("a", "V100", ("V100-0", "V100-1"), gpus=4),
           running("b", "V100", ("V100-2", "V100-3"), gpus=4, tenant="beta")]
    snap = snapshot(nodes({"V100": (6, 4)}), [pending("p", gpus=4, types=("V100",))], run,
                    queues=_queues(cohort="c1"))
    d = make_policy("fifo").schedule(snap)
    assert d.admits == []
    assert d.explanations["p"].reason == ("queue tenants/acme/queues/default is at its nominal quota on V100 "
                                          "(8/8 GPUs, this job needs 4) and the cohort c1 has nothing to lend on V100")


def test_borrows_idle_quota_from_its_cohort_up_to_the_borrowing_limit():
    run = [running("a", "V100", ("V100-0", "V100-1"), gpus=4)]
    pend = [pending("p1", gpus=4, types=("V100",), t=1), pending("p2", gpus=4, types=("V100",), t=2)]
    snap = snapshot(nodes({"V100": (4, 4)}), pend, run, queues=_queues(cohort="c1", limit={"V100": 4}))
    d = make_policy("fifo").schedule(snap)
    assert [(a.job_id, a.borrowed) for a in d.admits] == [("p1", True)]
    assert "borrowing limit of 4" in d.explanations["p2"].reason


def test_lender_reclaims_its_nominal_quota_by_preempting_borrowed_jobs():
    # acme borrowed beta's 8 GPUs; beta now needs 4 of its own quota back.
    run = [running("a1", "V100", ("V100-0",), gpus=4), running("a2", "V100", ("V100-1",), gpus=4),
           running("a3", "V100", ("V100-2",), gpus=4, borrowed=True, start=5),
           running("a4", "V100", ("V100-3",), gpus=4, borrowed=True, start=6)]
    snap = snapshot(nodes({"V100": (4, 4)}), [pending("b", gpus=4, tenant="beta", types=("V100",))], run,
                    queues=_queues(cohort="c1"))
    d = make_policy("fair-share").schedule(snap)
    assert d.preempts == [Preempt("a4", "b", "reclaim")]  # one victim is enough: the newest borrower
    assert d.admits == []
    assert "preempting 1 job(s) on V100 (reclaim)" in d.explanations["b"].reason


def test_priority_preemption_takes_the_fewest_whole_jobs_and_spares_gangs_parts():
    run = [running("low-gang", "V100", ("V100-0", "V100-1"), gpus=2, priority=0, start=1),
           running("low-1", "V100", ("V100-2",), gpus=2, priority=0, start=2),
           running("mid", "V100", ("V100-3",), gpus=2, priority=50, start=3)]
    snap = snapshot(nodes({"V100": (4, 2)}), [pending("hi", workers=2, gpus=2, priority=100)], run)
    d = make_policy("fifo").schedule(snap)
    victims = {p.job_id for p in d.preempts}
    # low-1 alone frees one node: not enough; the gang frees two: enough alone (newest-first tries
    # low-1 first, then the minimality pass drops it).
    assert victims == {"low-gang"}
    assert all(p.reason == "priority" and p.for_job == "hi" for p in d.preempts)


def test_no_preemption_of_equal_priority_or_non_preemptible_jobs():
    run = [running("same", "V100", ("V100-0",), priority=100),
           running("pinned", "V100", ("V100-1",), priority=0, preemptible=False)]
    snap = snapshot(nodes({"V100": (2, 1)}), [pending("hi", priority=100)], run)
    d = make_policy("fifo").schedule(snap)
    assert d.preempts == [] and d.admits == []


def test_a_job_already_yielding_is_waited_for_not_preempted_again():
    run = [running("old", "V100", ("V100-0",), priority=0, preempting=True),
           running("other", "V100", ("V100-1",), priority=0)]
    snap = snapshot(nodes({"V100": (2, 1)}), [pending("hi", priority=100)], run)
    d = make_policy("fifo").schedule(snap)
    assert d.preempts == []
    assert "waiting for 1 preempted job(s) on V100" in d.explanations["hi"].reason


def test_higher_priority_is_admitted_first_and_explanations_count_jobs_ahead():
    pend = [pending("old-low", priority=0, t=0), pending("hi1", priority=10, t=5),
            pending("hi2", priority=10, t=6), pending("hi3", priority=10, t=7)]
    snap = snapshot(nodes({"V100": (1, 1)}), pend, [running("r", "V100", ("V100-0",), preemptible=False)])
    snap2 = snapshot(nodes({"V100": (1, 1)}), pend)
    assert [a.job_id for a in make_policy("fifo").schedule(snap2).admits] == ["hi1"]
    d = make_policy("fifo").schedule(snap)
    e = d.explanations["old-low"]
    assert "3 higher-priority job(s) ahead" in e.blocking
    assert e.position == 4
    assert d.explanations["hi1"].position == 1


def test_weighted_fair_share_orders_tenants_by_usage_over_weight():
    qs = {ACME: QueueQuota(ACME, "acme", {"V100": 4}, weight=1.0),
          BETA: QueueQuota(BETA, "beta", {"V100": 4}, weight=4.0)}
    pend = [pending("a", tenant="acme", t=0), pending("b", tenant="beta", t=1)]
    # beta used 3x more, but its weight is 4x: 3000/4 < 1000/1, so beta goes first.
    snap = snapshot(nodes({"V100": (1, 1)}), pend, queues=qs, usage={"acme": 1000, "beta": 3000})
    assert [a.job_id for a in make_policy("fair-share").schedule(snap).admits] == ["b"]
    assert [a.job_id for a in make_policy("fifo").schedule(snap).admits] == ["a"]


def test_fair_share_interleaves_tenants_within_one_pass():
    pend = [pending(f"a{i}", tenant="acme", t=i) for i in range(4)] + [pending("b0", tenant="beta", t=10)]
    snap = snapshot(nodes({"V100": (2, 1)}), pend)
    assert sorted(a.job_id for a in make_policy("fair-share").schedule(snap).admits) == ["a0", "b0"]


def test_backfill_runs_short_jobs_that_end_before_the_head_can_start_but_not_long_ones():
    # 2 nodes x 2 GPUs; node 0 fully busy until t=100, node 1 has 1 GPU busy until t=50.
    run = [running("r0", "V100", ("V100-0",), gpus=2, work=100), running("r1", "V100", ("V100-1",), gpus=1, work=50)]
    pend = [pending("head", gpus=2, t=0), pending("long", gpus=1, t=1, work=500),
            pending("short", gpus=1, t=2, work=40)]
    d = make_policy("fifo").schedule(snapshot(nodes({"V100": (2, 2)}), pend, run))
    assert [a.job_id for a in d.admits] == ["short"]
    assert "holds a reservation" in " ".join(d.explanations["long"].blocking)
    assert d.explanations["head"].estimated_start == 50.0
    no_backfill = make_policy("fifo", backfill=False).schedule(snapshot(nodes({"V100": (2, 2)}), pend, run))
    assert [a.job_id for a in no_backfill.admits] == ["long"]  # would delay the head past t=50


def test_high_priority_job_over_its_queue_quota_preempts_lower_priority_jobs_of_its_own_queue():
    qs = {ACME: QueueQuota(ACME, "acme", {"V100": 2}), BETA: QueueQuota(BETA, "beta", {"V100": 4})}
    run = [running("acme-low", "V100", ("V100-0",), gpus=2, priority=0),
           running("beta-low", "V100", ("V100-1",), gpus=2, tenant="beta", priority=0)]
    free_nodes = nodes({"V100": (3, 2)})  # one node still free: capacity is not the problem, quota is
    d = make_policy("fifo").schedule(snapshot(free_nodes, [pending("hi", gpus=2, priority=100)], run, queues=qs))
    assert d.admits == [] and d.preempts == [Preempt("acme-low", "hi", "priority")]
    assert "to fit its quota" in d.explanations["hi"].reason
    same = make_policy("fifo").schedule(snapshot(free_nodes, [pending("eq", gpus=2, priority=0)], run, queues=qs))
    assert same.preempts == [] and "nominal quota on V100 (2/2 GPUs" in same.explanations["eq"].reason
