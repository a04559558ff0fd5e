"""Claim (engines/torch_engine/onednn.py): on CPU in fp32, a linear layer through oneDNN on a
weight reordered once takes less time than ``nn.Linear`` (MKL's sgemm) at decode's batch sizes.

Both sides in one run, on the same random weights and inputs, alternating per shape: the
projections of a 768-wide model and its 50,257-token LM head, at 1, 32 and 512 rows. The
largest difference between the two outputs is printed beside the times.

    python benchmarks/onednn_linear.py [--threads 2] [--iters 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "services"))


def _ms(fn: Callable[[object], object], x: object, iters: int) -> float:
    for _ in range(5):
        fn(x)
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - start) / iters * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--iters", type=int, default=50)
    a = p.parse_args()
    import torch

    from pylon_services.engines.torch_engine.onednn import OneDNNLinear

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with torch.inference_mode():
        for k, n in ((768, 768), (768, 2048), (2048, 768), (768, 50257)):
            linear = torch.nn.Linear(k, n, bias=False)
            fast = OneDNNLinear(linear)
            for rows in (1, 32, 512):
                x = torch.randn(rows, k)
                dense, onednn = _ms(linear, x, a.iters), _ms(fast, x, a.iters)
                print(json.dumps({"in": k, "out": n, "rows": rows, "nn_linear_ms": round(dense, 3),
                                  "onednn_ms": round(onednn, 3), "time_saved": round(1 - onednn / dense, 2),
                                  "max_abs_diff": float((fast(x) - linear(x)).abs().max())}), flush=True)


if __name__ == "__main__":
    main()
