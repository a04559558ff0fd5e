"""A declared cluster: ``v100=36,p100=36,k80=36`` (1 GPU per node) or ``v100=9x4`` (9 nodes x 4)."""

from __future__ import annotations

from pylon_services.scheduler.domain.scheduling import Node

CPUS_PER_GPU = 8.0


def parse_cluster(spec: str) -> list[Node]:
    """Nodes for a cluster spec; raises ValueError naming the bad part."""
    nodes: list[Node] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        gpu_type, sep, count = part.partition("=")
        try:
            n, _, per = count.partition("x")
            n_nodes, gpus = int(n), float(per or 1)
        except ValueError:
            n_nodes, gpus = -1, 0.0
        if not sep or not gpu_type or n_nodes < 1 or gpus <= 0:
            raise ValueError(f"bad cluster part {part!r}: write TYPE=NODES or TYPE=NODESxGPUS, e.g. v100=9x4")
        cpus = max(1.0, gpus * CPUS_PER_GPU)
        nodes += [Node(f"{gpu_type}-{i}", gpu_type, gpus, gpus, cpus, cpus_total=cpus) for i in range(n_nodes)]
    if not nodes:
        raise ValueError("empty cluster spec")
    return nodes
