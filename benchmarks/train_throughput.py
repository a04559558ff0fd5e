"""Claims about the causal-lm trainer's speed, each against a baseline in the same run.

1. **Trainer overhead (CPU)**: tokens/s of the built-in trainer (one worker, through
   ``workloads.local.LocalContext``: the real job module, reader, checkpoint writer and progress
   reports) over a plain hand-written PyTorch loop on the same model, data, batch and optimizer.
   Target >= 0.9.
2. **Checkpoint cost (CPU)**: tokens/s with a background checkpoint every 50 steps over the same
   run with none. Target: it costs <= 5% (ratio >= 0.95). Run-to-run noise on a small shared
   machine is several percent, so the cost is also measured inside the run: how much longer a
   step that saves takes than the run's median step, over the time of the 50 steps it covers.
3. **Data-parallel scaling (CPU)**: global tokens/s of two workers (one thread each, gloo) over
   one worker with two threads, at the same per-worker batch. Reported, no target: on one
   2-core machine both use the same cores.
4. **GPU** (``--device cuda``): tokens/s and MFU of the ``124m`` preset at sequence 1024 in bf16,
   against a plain Hugging Face ``GPT2LMHeadModel`` step (batch 16 x 1024, bf16 autocast, SDPA,
   fused AdamW), eager and compiled.

Throughput is total tokens over total time of the measured steps (the first ``--warmup`` steps of
every run are left out). Runs alternate between the two sides of each claim for ``--rounds``
rounds; medians are printed. Not a test: it never fails on the figures.

    .venv/bin/python benchmarks/train_throughput.py                      # CPU claims 1-3
    .venv/bin/python benchmarks/train_throughput.py --device cuda        # claim 4 on a GPU
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "services"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))

TOKENIZER_KEY, INDEX_KEY = "tok/tokenizer.json", "tok/shards/index.json"


def make_data(root: str, vocab: int) -> None:
    """The demo corpus, BPE-tokenized into shards as ingest writes them."""
    from pylon.demo_corpus import build_corpus
    from pylon_services.ingest.domain.tokenize import train_tokenizer, write_token_shards
    from pylon_services.storage.local import LocalObjectStore

    store = LocalObjectStore(root)
    docs = build_corpus().strip().split("\n\n")
    tok = train_tokenizer(docs, vocab_size=vocab)
    store.put(TOKENIZER_KEY, tok.to_str().encode())
    index = write_token_shards(docs, tok, lambda i, d: store.put(f"tok/shards/shard-{i:06d}.bin", d),
                               shard_tokens=1 << 16)
    store.put(INDEX_KEY, json.dumps(index).encode())


def workload(args: argparse.Namespace, batch: int, **extra: Any) -> dict[str, Any]:
    cfg = {"preset": args.preset, "seq_len": args.seq_len, "batch_size": batch, "steps": args.steps, "lr": 3e-3,
           "warmup": 5, "log_every": 1, "eval_fraction": 0.0, "device": args.device, **extra}
    return {"trainer": "causal-lm", "config": cfg,
            "token_data": [{"tokenizer_object_key": TOKENIZER_KEY, "index_object_key": INDEX_KEY}]}


def _throughput(times: list[float], tokens_per_step: int, warmup: int) -> float:
    """Tokens/s over the steps after ``warmup`` from per-step end times (seconds)."""
    measured = times[warmup:]
    return (len(measured) - 1) * tokens_per_step / (measured[-1] - measured[0])


def run_trainer(root: str, wl: dict[str, Any], rank: int, world: int, port: int, threads: int, warmup: int,
                every: int, save_cost: list[float] | None = None) -> float:
    """One rank of the built-in trainer; returns the gang's tokens/s (from rank 0's step times).
    With ``every`` steps between checkpoints, ``save_cost`` gets each save step's extra time
    over the median step, as a fraction of ``every`` median steps."""
    import torch

    from pylon_services.trainers.causal_lm_job import run
    from pylon_services.workloads.local import LocalContext

    torch.set_num_threads(threads)
    times: list[float] = []

    class Timed(LocalContext):
        def report_progress(self, step: int, total: int, metrics: Any) -> None:
            times.append(time.perf_counter())

    job = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    ctx = Timed(root, wl, rank=rank, world_size=world, rendezvous_port=port, job_id=job, checkpoint_every_steps=every)
    result = run(ctx)
    if result.exit_code:
        raise RuntimeError(result.error)
    cfg = wl["config"]
    if save_cost is not None:
        steps = [b - a for a, b in zip(times, times[1:], strict=False)]  # steps[i]: step i + 2
        median = statistics.median(steps[warmup:])
        # a save runs after step s is reported: it lengthens step s + 1, steps[s - 1]
        save_cost += [(steps[s - 1] - median) / (every * median) for s in range(every, len(times), every)]
    return _throughput(times, cfg["batch_size"] * cfg["seq_len"] * world, warmup) if rank == 0 else 0.0


def run_plain(root: str, args: argparse.Namespace, batch: int, threads: int) -> float:
    """The baseline: the same model, data and AdamW in the simplest loop PyTorch allows."""
    import torch
    from torch.nn import functional as F

    from pylon.data import ShardReader
    from pylon_services.ml.llama import Llama, preset
    from pylon_services.storage.local import LocalObjectStore

    torch.set_num_threads(threads)
    store = LocalObjectStore(root)
    index = json.loads(store.get(INDEX_KEY))
    model = Llama(preset(args.preset, vocab_size=index["vocab_size"]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    reader = ShardReader(store, "tok/shards", seq_len=args.seq_len + 1, batch_size=batch, seed=0, output="torch")
    times = []
    batches = iter(reader)
    for _ in range(args.steps):
        try:
            b = next(batches)
        except StopIteration:
            batches = iter(reader)
            b = next(batches)
        logits = model(b[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), b[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the trainer reads its loss every step too
        times.append(time.perf_counter())
    return _throughput(times, batch * args.seq_len, args.warmup)


def gang(root: str, wl: dict[str, Any], world: int, warmup: int) -> float:
    from pylon_services.localstack.procs import free_port

    port = free_port()
    with mp.get_context("spawn").Pool(world) as pool:
        rates = pool.starmap(run_trainer, [(root, wl, r, world, port, 1, warmup, 10**9) for r in range(world)])
    return rates[0]


def cpu_claims(args: argparse.Namespace, root: str) -> None:
    rows: dict[str, list[float]] = {k: [] for k in ("plain", "trainer", "trainer+ckpt", "1x2threads", "2x1thread")}
    save_cost: list[float] = []
    big = 10**9  # checkpoint_every_steps that never comes
    for r in range(args.rounds):
        rows["plain"].append(run_plain(root, args, args.batch, 2))
        rows["trainer"].append(run_trainer(root, workload(args, args.batch), 0, 1, 0, 2, args.warmup, big))
        rows["trainer+ckpt"].append(run_trainer(root, workload(args, args.batch), 0, 1, 0, 2, args.warmup, 50,
                                                save_cost))
        rows["1x2threads"].append(rows["trainer"][-1])
        rows["2x1thread"].append(gang(root, workload(args, args.batch), 2, args.warmup))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print("\nmedian tokens/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()))
    print(f"1. trainer / plain loop:          {med['trainer'] / med['plain']:.3f}  (target >= 0.9)")
    print(f"2. with checkpoints / without:    {med['trainer+ckpt'] / med['trainer']:.3f}  (target >= 0.95); "
          f"in-run cost of a save every 50 steps: {statistics.median(save_cost):.2%} of their time "
          f"(max {max(save_cost):.2%}, {len(save_cost)} saves)")
    print(f"3. 2 workers x 1 thread / 1 x 2:  {med['2x1thread'] / med['1x2threads']:.3f}  (reported)")


def gpu_claim(args: argparse.Namespace, root: str) -> None:
    import torch

    from pylon_services.ml.llama import preset
    from pylon_services.ml.perf import mfu, peak_flops

    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    index = json.loads(open(os.path.join(root, INDEX_KEY)).read())
    spec = preset(args.preset, vocab_size=index["vocab_size"])
    for compiled in ("auto", False):
        rate = run_trainer(root, workload(args, args.batch, compile=compiled, dtype="bfloat16"), 0, 1, 0, 1,
                           args.warmup, 10**9)
        util = mfu(spec.flops_per_token(args.seq_len), rate, peak)
        print(f"causal-lm {args.preset} compile={compiled}: {rate:,.0f} tok/s, MFU {util if util is None else f'{util:.1%}'} "
              f"on {name}", flush=True)
    for compiled in (False, True):
        rate, flops = hf_gpt2(args, compiled)
        util = mfu(flops, rate, peak)
        print(f"HF GPT2LMHeadModel compiled={compiled}: {rate:,.0f} tok/s, MFU "
              f"{util if util is None else f'{util:.1%}'}", flush=True)


def hf_gpt2(args: argparse.Namespace, compiled: bool) -> tuple[float, float]:
    """The baseline of claim 4: GPT-2 small, batch x seq, bf16 autocast, SDPA, fused AdamW."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_positions=args.seq_len, attn_implementation="sdpa")).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    step = torch.compile(model) if compiled else model
    x = torch.randint(0, 50257, (args.batch, args.seq_len), device="cuda")
    times = []
    for _ in range(args.steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter())
    n = sum(p.numel() for p in model.parameters())
    flops = 6 * n + 12 * 12 * 12 * 64 * args.seq_len
    return _throughput(times, args.batch * args.seq_len, args.warmup), flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default=None, help="tiny on CPU, 124m on CUDA by default")
    p.add_argument("--seq-len", type=int, default=None, help="128 on CPU, 1024 on CUDA")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="150 on CPU (three checkpoints' worth), 60 on CUDA")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--vocab", type=int, default=None, help="2048 on CPU, 50257 on CUDA (GPT-2's)")
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.preset = args.preset or ("124m" if gpu else "tiny")
    args.seq_len = args.seq_len or (1024 if gpu else 128)
    args.steps = args.steps or (60 if gpu else 150)
    vocab = args.vocab or (50257 if gpu else 2048)
    with tempfile.TemporaryDirectory(prefix="pylon-train-bench-") as root:
        make_data(root, vocab)
        print(f"train_throughput: preset {args.preset}, seq {args.seq_len}, batch {args.batch}, {args.steps} steps "
              f"({args.warmup} warm-up), {os.cpu_count()} CPUs", flush=True)
        (gpu_claim if gpu else cpu_claims)(args, root)


if __name__ == "__main__":
    main()
