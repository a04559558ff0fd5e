"""Running the causal-lm job as one rank of a local run (``workloads.local.LocalContext``), in
this process or in a spawned one (multi-rank runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pylon_services.workloads.local import LocalContext


def run_rank(root: str, workload: Mapping[str, Any], rank: int, world_size: int, port: int,
             **kwargs: Any) -> dict[str, Any]:
    """Run the causal-lm job as one rank (in a spawned process for multi-rank runs); returns its
    result, log and progress, picklable."""
    import torch

    from pylon_services.trainers.causal_lm_job import run

    torch.set_num_threads(1)
    ctx = LocalContext(root, workload, rank=rank, world_size=world_size, rendezvous_port=port, **kwargs)
    result = run(ctx)
    return {"result": result.to_dict(), "lines": ctx.lines, "progress": ctx.progress}
