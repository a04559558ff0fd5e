"""Declared pools: scale-from-zero at submit and the autoscaler's resource request (pure domain)."""

from __future__ import annotations

from pylon_services.scheduler.domain.autoscale import DeclaredPool, headroom, scale_up_plan, with_declared
from pylon_services.scheduler.domain.placement import check_satisfiable
from pylon_services.scheduler.domain.scheduling import Demand, Node, PendingJob

V100 = Node("v1", "V100", 8, 8, 32, cpus_total=32)


def job(i: int, workers: int, gpus: float, types: tuple[str, ...] = ()) -> PendingJob:
    return PendingJob(f"j{i}", "t", "q", 0, float(i), Demand(workers, gpus, 1.0, 0, types))


def test_a_pool_scaled_to_zero_accepts_jobs_that_fit_its_declared_nodes() -> None:
    a100 = DeclaredPool("A100", 0, 4, gpus_per_node=8, cpus_per_node=64)
    assert check_satisfiable(Demand(2, 4, 1, 0, ("A100",)), [V100]) is not None  # undeclared: unknown type
    nodes = with_declared([V100], [a100])
    assert check_satisfiable(Demand(2, 4, 1, 0, ("A100",)), nodes) is None
    assert "largest A100 node has 8" in (check_satisfiable(Demand(1, 16, 1, 0, ("A100",)), nodes) or "")
    assert "whole A100 pool" in (check_satisfiable(Demand(5, 8, 1, 0, ("A100",)), nodes) or "")  # 4 nodes max


def test_headroom_counts_live_nodes_and_never_goes_negative() -> None:
    pools = [DeclaredPool("V100", 0, 3), DeclaredPool("A100", 1, 2)]
    assert headroom(pools, [V100]) == {"V100": 2, "A100": 2}
    assert headroom([DeclaredPool("V100", 0, 0)], [V100]) == {"V100": 0}
    # unknown node shape: the largest live node of the type stands in for the nodes it adds
    assert [n.gpus_total for n in with_declared([V100], [DeclaredPool("V100", 0, 2)])] == [8, 8]


def test_scale_up_bundles_follow_queue_order_and_pool_headroom() -> None:
    pools = [DeclaredPool("A100", 0, 2, gpus_per_node=8), DeclaredPool("L4", 0, 1, gpus_per_node=4)]
    pending = [job(1, 2, 4, ("A100",)), job(2, 1, 8, ("A100", "L4")), job(3, 1, 4, ("A100", "L4")),
               job(4, 1, 0), job(5, 3, 4, ("L4",))]
    bundles, asked = scale_up_plan(pending, pools, [V100])
    types = [next(k for k in b if k.startswith("accelerator_type:")) for b in bundles]
    # j1 takes 8 of A100's 16 GPUs, j2 the other 8, j3 falls through to L4, the CPU job and j5
    # (12 GPUs > L4's remaining 0) ask for nothing
    assert types == ["accelerator_type:A100"] * 3 + ["accelerator_type:L4"]
    assert bundles[0] == {"GPU": 4, "CPU": 1.0, "accelerator_type:A100": 0.001}
    assert asked == {"j1": "A100", "j2": "A100", "j3": "L4"}
    assert scale_up_plan(pending, pools, [V100], limit=2)[0] == bundles[:2]
    assert scale_up_plan(pending, [], [V100]) == ([], {})


def test_a_plan_extended_for_arrivals_equals_one_plan_over_the_whole_queue() -> None:
    """Append passes ask only for the arrivals, behind the request already made (``already``):
    together that must be the request one plan over the whole queue makes."""
    pools = [DeclaredPool("A100", 0, 2, gpus_per_node=8), DeclaredPool("L4", 0, 1), DeclaredPool("V100", 0, 3)]
    queue = [job(i, 1 + i % 3, float(1 + i % 4), (("A100",), ("A100", "L4"), ("V100",), ())[i % 4]) for i in range(12)]
    for cut in range(len(queue) + 1):
        for limit in (3, 6, 256):
            whole, asked_whole = scale_up_plan(queue, pools, [V100], limit=limit)
            head, asked_head = scale_up_plan(queue[:cut], pools, [V100], limit=limit)
            tail, asked_tail = scale_up_plan(queue[cut:], pools, [V100], limit=limit, already=head)
            assert head + tail == whole, (cut, limit)
            assert asked_head | asked_tail == asked_whole, (cut, limit)
