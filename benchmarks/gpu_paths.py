"""Figures for the GPU paths of the built-in trainer and the torch engine (needs CUDA).

No target ratio is claimed in an issue; this records what the GPU path buys over the CPU path on
the same machine and in the same run, so a regression shows up:

- training: tokens/s of ``train`` with the same TrainConfig on ``cuda`` (bf16 autocast, fused
  AdamW) vs ``cpu`` (fp32, all cores), after a warm-up run on each device;
- generation: tokens/s of one ``ModelRunner.generate`` stream on ``cuda`` with the KV cache vs
  without it (full-window recompute), greedy, same prompt.

    PYTHONPATH=services:sdk:. python benchmarks/gpu_paths.py [--steps 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "services"))
from pylon_services.engines.torch_engine import ModelRunner  # noqa: E402
from pylon_services.trainers.tiny_gpt import TrainConfig, train  # noqa: E402

SHAPE = {"batch_size": 32, "block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384}


def corpus(mib: int = 4) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
    return line * (mib * 1024 * 1024 // len(line))


def train_rate(device: str, steps: int, data: bytes) -> float:
    """Tokens/s of a timed run after a short warm-up (kernel selection, allocator, threads)."""
    cfg = dict(SHAPE, warmup=0, eval_every=0, log_every=max(1, steps), device=device)
    train(data, TrainConfig(steps=5, **cfg))  # type: ignore[arg-type]
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = train(data, TrainConfig(steps=steps, **cfg))  # type: ignore[arg-type]
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return steps * SHAPE["batch_size"] * SHAPE["block_size"] / seconds if result.steps_done else 0.0


def generate_rate(files: dict[str, bytes], *, kv_cache: bool, tokens: int) -> float:
    runner = ModelRunner.from_files(files, device="cuda", use_kv_cache=kv_cache)
    list(runner.generate("The quick ", max_tokens=8, temperature=0))
    start = time.perf_counter()
    n = sum(1 for _ in runner.generate("The quick ", max_tokens=tokens, temperature=0))
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="timed training steps on the GPU")
    ap.add_argument("--cpu-steps", type=int, default=10, help="timed training steps on the CPU")
    ap.add_argument("--tokens", type=int, default=200, help="generated tokens per stream")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs one")
    data = corpus()
    gpu = train_rate("cuda", args.steps, data)
    cpu = train_rate("cpu", args.cpu_steps, data)
    trained = train(data, TrainConfig(steps=50, **dict(SHAPE, warmup=0, eval_every=0, device="cuda")))  # type: ignore[arg-type]
    with_cache = generate_rate(trained.files, kv_cache=True, tokens=args.tokens)
    without = generate_rate(trained.files, kv_cache=False, tokens=args.tokens)
    out = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(), "shape": SHAPE,
        "train_tokens_per_s_cuda": round(gpu), "train_tokens_per_s_cpu": round(cpu),
        "train_speedup": round(gpu / cpu, 1),
        "generate_tokens_per_s_kv_cache": round(with_cache, 1),
        "generate_tokens_per_s_no_cache": round(without, 1),
        "kv_cache_speedup": round(with_cache / without, 2),
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k:32s} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
