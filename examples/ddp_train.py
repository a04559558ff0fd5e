"""A custom training script as a Pylon job: plain PyTorch DDP across the job's workers.

Each worker runs this script once; Pylon sets torchrun's variables (MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE, LOCAL_RANK), so ``init_process_group`` needs no arguments. The model is a tiny
next-token predictor (embedding + linear) trained on a tokenized dataset version read through
``pylon.train.dataset_reader`` when one is given (``--dataset``, declared in the job's
``command.datasets``), else on synthetic sequences. It resumes from its checkpoint
(``load_checkpoint``), saves one every ``--save-every`` steps (``save_checkpoint``: every rank its
own state, uploaded in the background), reports its loss, and on preemption saves and exits so
the scheduler requeues it. At the end each rank logs the checksum of its parameters, which DDP's
all-reduce keeps equal across ranks although each rank trained on other data.

Run it (from the repository root):

    pylon jobs submit --working-dir examples --workers 2 -- python ddp_train.py --steps 50

or with a spec file (``pylon jobs submit ddp-job.yaml``; ``working_dir`` is relative to it)::

    workers: 2
    resources: {cpus: 1, gpus: 0}        # gpus: 1 trains on CUDA with nccl
    max_retries: 1
    checkpoint_every_steps: 10
    command:
      argv: [python, ddp_train.py, --steps, "50"]
      working_dir: examples
      # datasets: [tenants/-/datasets/corpus/versions/latest]   # then add --dataset <that name>

Outside Pylon it runs as one process on CPU (``python examples/ddp_train.py --steps 20``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import pylon.train as pt


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--dataset", default=os.environ.get("DDP_DATASET", ""), help="a tokenized dataset version")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128, help="vocabulary of the synthetic data")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--save-every", type=int, default=0, help="0: the job's checkpoint_every_steps, else 10")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def synthetic(vocab: int, seq_len: int, batch: int, seed: int, rank: int, step: int) -> torch.Tensor:
    """Arithmetic sequences mod ``vocab`` (learnable), a pure function of (seed, rank, step): a
    resumed run sees exactly the batches the interrupted one would have."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + step)
    start = torch.randint(0, vocab, (batch, 1), generator=g)
    stride = torch.randint(1, 4, (batch, 1), generator=g)
    return (start + stride * torch.arange(seq_len + 1)) % vocab


def batches(args: argparse.Namespace, w: pt.World, start_step: int, reader_state: dict | None
            ) -> tuple[Iterator[torch.Tensor], int, object | None]:
    """This rank's batches of (seq_len + 1) tokens from ``start_step`` on, the vocabulary size,
    and the dataset reader (None for synthetic data)."""
    if not args.dataset:
        steps = range(start_step + 1, args.steps + 1)
        it = (synthetic(args.vocab, args.seq_len, args.batch_size, args.seed, w.rank, s) for s in steps)
        return it, args.vocab, None
    reader = pt.dataset_reader(args.dataset, seq_len=args.seq_len + 1, batch_size=args.batch_size, seed=args.seed,
                               tokenizer=args.tokenizer, output="torch", state=reader_state)

    def forever() -> Iterator[torch.Tensor]:
        while True:
            yield from reader

    return forever(), int(reader.index.get("vocab_size") or 65536), reader


def main() -> None:
    args = parse_args()
    torch.set_num_threads(int(os.environ.get("PYLON_TORCH_THREADS", "1")))
    w = pt.world()
    cuda = w.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(w.device)
    distributed = "MASTER_ADDR" in os.environ
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")  # env:// from the variables Pylon sets
    every = args.save_every or pt.checkpoint_every(10)

    resumed = pt.load_checkpoint()
    step, state = resumed if resumed else (0, {})
    it, vocab, reader = batches(args, w, step, state.get("reader"))
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = nn.Sequential(nn.Embedding(vocab, args.dim), nn.Linear(args.dim, vocab)).to(w.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    ddp = DistributedDataParallel(model, device_ids=[w.local_rank] if cuda else None) if distributed else model
    print(f"rank {w.rank}/{w.world_size} on {w.device}: {'resuming at step ' + str(step) if resumed else 'starting'}"
          f" ({'dataset ' + args.dataset if args.dataset else 'synthetic data'})", flush=True)

    def save(at: int) -> None:
        pt.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                            "reader": reader.state_dict() if reader is not None else None}, at)  # type: ignore[attr-defined]

    while step < args.steps:
        tokens = next(it).to(w.device)
        logits = ddp(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()
        step += 1
        if w.rank == 0 and (step % 5 == 0 or step == args.steps):
            pt.report(step, loss=loss.item())
        if step % every == 0 and step < args.steps:
            save(step)
        if preempted(distributed, w.device):
            save(step)
            print(f"rank {w.rank}: preempted at step {step}; checkpoint saved", flush=True)
            pt.exit_preempted()

    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    print(f"rank {w.rank} done at step {step}: loss {loss.item():.4f} param checksum {checksum:.10e}", flush=True)
    if distributed:
        dist.destroy_process_group()


def preempted(distributed: bool, device: str) -> bool:
    """Whether to stop now, agreed by every rank (each sees its own flag a little apart in time;
    ranks that stopped at different steps would hang in the next all-reduce)."""
    flag = torch.tensor([1.0 if pt.should_preempt() else 0.0], device=device)
    if distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


if __name__ == "__main__":
    main()
