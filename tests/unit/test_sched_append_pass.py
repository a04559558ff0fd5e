"""Append passes (``Policy.extend``): new arrivals considered behind the jobs a whole pass already
went through, against what that pass left. For FIFO with arrivals that sort last this must decide
exactly what one whole pass over everything decides: the same admits, preemptions and
explanations (positions, reasons, estimates) for the arrivals, and nothing new for the others."""

from __future__ import annotations

import random

import pytest
from sched_helpers import nodes, pending, running, snapshot

from pylon_services.scheduler.domain.policies import POLICIES, make_policy
from pylon_services.scheduler.domain.scheduling import QueueQuota

TYPES = ("V100", "P100", "K80")


def _world(seed: int) -> tuple[list, list, list, dict]:
    rng = random.Random(seed)
    node_list = nodes({t: (rng.randint(1, 3), rng.choice([2, 4, 8])) for t in TYPES})
    tenants = ["a", "b", "c"]
    queues = {}
    for t in tenants:
        name = f"tenants/{t}/queues/default"
        queues[name] = QueueQuota(name, t, {ty: float(rng.choice([0, 2, 4, 8, 16])) for ty in TYPES},
                                  cohort=rng.choice(["", "shared"]))
    run, used = [], {n.id: 0.0 for n in node_list}
    for i in range(rng.randint(0, 6)):
        n = rng.choice(node_list)
        g = float(rng.choice([1, 2]))
        if used[n.id] + g <= n.gpus_total:
            used[n.id] += g
            run.append(running(f"r{i}", n.gpu_type, (n.id,), gpus=g, tenant=rng.choice(tenants),
                               priority=rng.choice([0, 0, 5]), start=float(-rng.randint(1, 50)),
                               work=float(rng.randint(10, 500))))
    jobs = []
    for i in range(rng.randint(5, 40)):
        jobs.append(pending(f"p{i:03d}", workers=rng.choice([1, 1, 2, 4]), gpus=float(rng.choice([1, 2, 4])),
                            types=rng.choice([(), ("V100",), ("P100", "K80")]), tenant=rng.choice(tenants),
                            priority=rng.choice([5, 10]), t=float(i), work=float(rng.randint(10, 900))))
    return node_list, run, jobs, queues


@pytest.mark.parametrize("seed", range(60))
def test_fifo_append_pass_decides_what_one_whole_pass_decides(seed: int) -> None:
    node_list, run, jobs, queues = _world(seed)
    cut = len(jobs) // 2
    old, arrivals = jobs[:cut], jobs[cut:]
    low = min(j.priority for j in old) if old else 0
    arrivals = [a for a in arrivals if a.priority <= low]  # what the controller allows
    policy = make_policy("fifo")
    whole = policy.schedule(snapshot(node_list, old + arrivals, run, queues=queues))
    first = policy.run(snapshot(node_list, old, run, queues=queues))
    before = first.decision
    appended = policy.extend(first, arrivals)
    ids = {a.id for a in arrivals}
    assert [a for a in whole.admits if a.job_id in ids] == appended.admits
    assert [a for a in whole.admits if a.job_id not in ids] == before.admits
    assert [p for p in whole.preempts if p.for_job in ids] == appended.preempts
    assert {k: e for k, e in whole.explanations.items() if k in ids} == appended.explanations
    assert {k: e for k, e in whole.explanations.items() if k not in ids} == before.explanations


def test_append_pass_continues_positions_and_queues_behind_the_head_reservation() -> None:
    node_list = nodes({"V100": (1, 2)})
    run = [running("r0", "V100", ("V100-0",), gpus=2, work=100.0)]
    queues = {"tenants/acme/queues/default": QueueQuota("tenants/acme/queues/default", "acme", {"V100": 8.0})}
    old = [pending("p0", gpus=2, types=("V100",), t=0.0), pending("p1", gpus=1, types=("V100",), t=1.0)]
    policy = make_policy("fifo")
    first = policy.run(snapshot(node_list, old, run, queues=queues))
    assert not first.decision.admits
    new = policy.extend(first, [pending("p2", gpus=1, types=("V100",), t=2.0)])
    exp = new.explanations["p2"]
    assert exp.position == 3
    assert any("p0 at the head of the line holds a reservation" in b for b in exp.blocking)
    # Extended again: the pass keeps taking arrivals.
    again = policy.extend(first, [pending("p3", gpus=1, types=("V100",), t=3.0)])
    assert again.explanations["p3"].position == 4 and set(again.explanations) == {"p3"}


def test_append_pass_admits_an_arrival_that_fits_where_the_waiting_jobs_do_not() -> None:
    node_list = nodes({"V100": (1, 4), "K80": (1, 4)})
    queues = {
        "tenants/a/queues/default": QueueQuota("tenants/a/queues/default", "a", {"V100": 0.0, "K80": 0.0}),
        "tenants/b/queues/default": QueueQuota("tenants/b/queues/default", "b", {"K80": 4.0}),
    }
    old = [pending(f"a{i}", tenant="a", t=float(i)) for i in range(3)]
    for name in POLICIES:
        policy = make_policy(name)
        first = policy.run(snapshot(node_list, old, queues=queues))
        assert not first.decision.admits, name
        new = policy.extend(first, [pending("b0", tenant="b", gpus=2, t=9.0)])
        assert [(a.job_id, a.gpu_type) for a in new.admits] == [("b0", "K80")], name
        # What it took is gone for the next arrival: b's quota has 2 K80s left, not 4.
        later = policy.extend(first, [pending("b1", tenant="b", gpus=4, t=10.0)])
        assert not later.admits and "b1" in later.explanations, name
