"""Placement: gang all-or-nothing on one GPU type, best fit, and submit-time satisfiability."""

from pylon_services.scheduler.domain.placement import FreeIndex, check_satisfiable
from pylon_services.scheduler.domain.policies import make_policy
from pylon_services.scheduler.domain.scheduling import Demand, Node
from tests.unit.sched_helpers import nodes, pending, running, snapshot


def test_gang_is_placed_whole_on_one_gpu_type_or_not_at_all():
    idx = FreeIndex(nodes({"V100": (2, 2), "P100": (1, 4)}))
    assert idx.place(Demand(3, 2, 1.0, 0), "V100") is None
    assert idx.free_gpus["V100"] == 4  # the failed attempt rolled back
    placed = idx.place(Demand(2, 2, 1.0, 0), "P100")
    assert placed == ("P100-0", "P100-0")
    assert idx.free_gpus["P100"] == 0


def test_best_fit_keeps_big_nodes_free_for_big_workers():
    ns = [Node("big", "V100", 8, 8, 64), Node("tiny", "V100", 8, 1, 64)]
    idx = FreeIndex(ns)
    assert idx.place(Demand(1, 1, 1.0, 0), "V100") == ("tiny",)
    assert idx.max_free("V100") == 8
    assert idx.place(Demand(1, 8, 1.0, 0), "V100") == ("big",)


def test_policy_never_splits_a_gang_across_gpu_types():
    snap = snapshot(nodes({"V100": (1, 2), "P100": (1, 2)}), [pending("g", workers=2, gpus=2)])
    d = make_policy("fifo").schedule(snap)
    assert d.admits == []
    assert "gang of 2 workers x 2 GPUs" in d.explanations["g"].reason
    assert "largest free set is 1 workers" in d.explanations["g"].reason


def test_check_satisfiable_rejects_too_many_gpus_per_worker():
    why = check_satisfiable(Demand(1, 16, 1.0, 0, ("V100",)), nodes({"V100": (4, 8)}))
    assert why is not None and "16 GPUs per worker" in why and "largest V100 node has 8" in why


def test_check_satisfiable_rejects_unknown_gpu_type():
    why = check_satisfiable(Demand(1, 1, 1.0, 0, ("H100",)), nodes({"V100": (1, 8)}))
    assert why is not None and "unknown GPU type" in why and "H100" in why


def test_check_satisfiable_rejects_gang_larger_than_pool_and_accepts_feasible():
    ns = nodes({"V100": (2, 4), "K80": (8, 4)})
    assert "holds 4" in (check_satisfiable(Demand(5, 2, 1.0, 0, ("V100",)), ns) or "")
    assert check_satisfiable(Demand(5, 2, 1.0, 0, ()), ns) is None  # fits on the K80 pool
    assert check_satisfiable(Demand(1, 4, 1.0, 0, ("V100", "K80")), ns) is None
    busy = snapshot(ns, [], [running("r", "V100", ("V100-0",), gpus=4)])
    assert check_satisfiable(Demand(1, 4, 1.0, 0, ("V100",)), busy.nodes) is None  # busy now, not never
