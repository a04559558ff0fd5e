"""Figures for the GPU path of the causal-lm trainer (needs CUDA).

No target ratio is claimed in an issue; this records what the GPU path buys over the CPU path on
the same machine and in the same run, so a regression shows up: tokens/s of the causal-lm
``Trainer`` with the same settings on ``cuda`` (bf16 autocast, fused AdamW) vs ``cpu`` (fp32,
all cores), after a warm-up run on each device. Serving figures are in engine_throughput.py.

    PYTHONPATH=services:sdk:. python benchmarks/gpu_paths.py [--steps 200] [--cpu-steps 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "services"))
from pylon_services.ml.llama import Llama, preset  # noqa: E402
from pylon_services.trainers.causal_lm import Hooks, Trainer  # noqa: E402
from pylon_services.trainers.causal_lm_settings import Settings  # noqa: E402

VOCAB = 8192
# The tiny preset at a longer sequence: big enough that the GPU is not idle between kernels.
PRESET, SEQ_LEN, BATCH = "tiny", 256, 32


class RandomTokens:
    """Random token windows (the figures time compute, not data), resumable like the shard reader."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.pos = state["pos"] if state else 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            self.pos += 1
            g = torch.Generator().manual_seed(self.pos)
            yield torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=g)

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos}


def _run(device: str, steps: int) -> None:
    s = Settings.from_config({"preset": PRESET, "seq_len": SEQ_LEN, "batch_size": BATCH, "steps": steps,
                              "log_every": max(1, steps), "device": device, "compile": False})
    model = Llama(preset(s.preset, vocab_size=VOCAB, **dict(s.model)))
    model.reset_parameters(torch.Generator().manual_seed(0))
    Trainer(s, model, RandomTokens, None, Hooks(log=lambda line: None)).run()
    if device == "cuda":
        torch.cuda.synchronize()


def train_rate(device: str, steps: int) -> float:
    """Tokens/s of a timed run after a short warm-up (kernel selection, allocator, threads)."""
    _run(device, 5)
    start = time.perf_counter()
    _run(device, steps)
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="timed training steps on the GPU")
    ap.add_argument("--cpu-steps", type=int, default=10, help="timed training steps on the CPU")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs one")
    gpu = train_rate("cuda", args.steps)
    cpu = train_rate("cpu", args.cpu_steps)
    out = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "shape": {"preset": PRESET, "seq_len": SEQ_LEN, "batch_size": BATCH, "vocab": VOCAB},
        "train_tokens_per_s_cuda": round(gpu), "train_tokens_per_s_cpu": round(cpu),
        "train_speedup": round(gpu / cpu, 1),
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k:32s} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
