"""Helpers for user code running as a Pylon job: preemption, checkpoints, metrics, data, the gang.

A preemptible job polls ``should_preempt()`` (cheap: one file check) between steps; when it
turns True the job saves its state under ``checkpoint_dir()`` and calls ``exit_preempted()``.
The scheduler requeues it and the next attempt finds the same files in ``checkpoint_dir()``, so
it resumes where it stopped. A job that ignores the flag gets SIGTERM after the grace period.
A job that should survive crashes checkpoints every ``checkpoint_every()`` steps (the spec's
``checkpoint_every_steps``; ``should_checkpoint(step)`` says when) and then calls
``checkpoint_saved(step)``, which returns once the checkpoint is in object storage: a retried
attempt finds it in ``checkpoint_dir()``.
``report(step, loss=...)`` records metrics (``pylon jobs get``, ListJobMetrics) and feeds the
scheduler's throughput table. ``data_store()`` reads the dataset versions the job's spec names
(``command.datasets``) and writes under the job's ``output/``, with no object-store credentials:
through an endpoint its worker serves it; ``dataset_reader()`` reads this rank's slice of a
tokenized dataset version through it.

Data-parallel jobs: ``world()`` says this worker's rank, the gang's size and the device to use;
the worker sets torchrun's variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), so ``torch.distributed.init_process_group()`` works unchanged. Every rank saves
its own state with ``save_checkpoint(state, step)`` (it returns at once; the worker uploads in the
background, and a checkpoint becomes the one to resume from only once every rank's part is up)
and resumes with ``load_checkpoint()``. Outside a Pylon job all of these are harmless no-ops
(``data_store()`` and ``dataset_reader()`` raise: there is nothing to read).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: numpy and torch are not a cost every job script should pay
    from pylon.data.reader import ShardReader
    from pylon.data.sources import JobDataSource

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped to be requeued", not a failure
_METRICS_PREFIX = "##pylon-metrics "
CHECKPOINT_FILE = "checkpoint.pt"


def should_preempt() -> bool:
    """True once the scheduler asked this job to yield its GPUs."""
    flag = os.environ.get("PYLON_PREEMPT_FILE")
    return flag is not None and flag != "" and os.path.exists(flag)


def checkpoint_dir() -> str:
    """A directory restored from the job's last checkpoint before start and saved after exit."""
    path = os.environ.get("PYLON_CHECKPOINT_DIR") or os.path.join(os.getcwd(), "checkpoint")
    os.makedirs(path, exist_ok=True)
    return path


def checkpoint_every(default: int = 0) -> int:
    """The job's ``checkpoint_every_steps`` (0 when the job left it unset: then ``default``)."""
    return int(os.environ.get("PYLON_CHECKPOINT_EVERY", "0") or 0) or default


def should_checkpoint(step: int, default: int = 0) -> bool:
    """True when ``step`` is one the job should checkpoint at (every ``checkpoint_every()`` steps)."""
    every = checkpoint_every(default)
    return every > 0 and step > 0 and step % every == 0


def _mark_saved(step: int) -> str | None:
    """Tell the worker ``checkpoint_dir()`` holds a complete checkpoint of ``step``; the mark's
    path, or None outside a Pylon job."""
    mark = os.environ.get("PYLON_CHECKPOINT_SAVED_FILE")
    if not mark:
        return None
    tmp = mark + f".{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(int(step)))
    os.replace(tmp, mark)
    return mark


def checkpoint_saved(step: int, timeout_s: float = 300.0) -> bool:
    """Say that ``checkpoint_dir()`` now holds a complete checkpoint of ``step`` and wait until
    Pylon has uploaded it to object storage (True), so a retried or requeued attempt resumes from
    it even if this process dies right after; write the checkpoint's files completely (e.g. to a
    temporary name, then ``os.replace``) before calling. Every rank of a gang calls it at the same
    steps. False when the upload failed or took longer than ``timeout_s``, and at once outside
    Pylon. ``save_checkpoint`` is the variant that does not wait."""
    mark = _mark_saved(step)
    if mark is None:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(mark + ".done") as f:
                ack = f.read().strip()
            if ack == str(int(step)):
                return True
            if ack == f"!{int(step)}":
                return False
        except OSError:
            pass
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class World:
    """This worker's place in the job's gang and the device it should compute on."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda:<local_rank>" when CUDA is available and the job has GPUs, else "cpu"


def world() -> World:
    """Rank, world size, local rank and device of this worker (rank 0 of 1 on "cpu" or the first
    GPU outside Pylon)."""
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    gpus = os.environ.get("PYLON_GPUS")
    device = "cpu"
    if gpus is None or float(gpus or 0) > 0:
        try:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{local}"
        except ImportError:
            pass
    return World(rank(), world_size(), local, device)


def save_checkpoint(state: Mapping[str, Any], step: int) -> str:
    """Save this rank's ``state`` (anything ``torch.save`` takes: model and optimizer state
    dicts, RNG states, a reader's ``state_dict()``) as the checkpoint of ``step`` and return its
    local path. Atomic (written to a temporary file, then renamed over ``checkpoint.pt`` in
    ``checkpoint_dir()``; only the newest is kept locally); in a Pylon job the worker then
    uploads it in the background: this does not wait (``checkpoint_saved`` does). Every rank
    saves its own state, at the same steps."""
    import torch

    directory = checkpoint_dir()
    path, tmp = os.path.join(directory, CHECKPOINT_FILE), os.path.join(directory, f".{CHECKPOINT_FILE}.{step}.tmp")
    torch.save({"step": int(step), "state": dict(state)}, tmp)
    os.replace(tmp, path)
    _mark_saved(step)
    return path


def load_checkpoint(map_location: str = "cpu") -> tuple[int, dict[str, Any]] | None:
    """(step, state) of the checkpoint ``save_checkpoint`` wrote that Pylon restored before
    start (this rank's), or None when there is none."""
    path = os.path.join(checkpoint_dir(), CHECKPOINT_FILE)
    if not os.path.exists(path):
        return None
    import torch

    # The job's own file (restored from its own checkpoint): not only tensors (RNG states, dicts).
    saved = torch.load(path, map_location=map_location, weights_only=False)
    return int(saved["step"]), dict(saved["state"])


def exit_preempted() -> None:
    """Leave after checkpointing: the scheduler requeues the job instead of failing it."""
    sys.stdout.flush()
    sys.exit(PREEMPTED_EXIT_CODE)


def report(step: int, **metrics: float) -> None:
    """Record metrics at ``step`` (e.g. ``report(100, loss=2.3)``)."""
    values = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    print(_METRICS_PREFIX + json.dumps(values), flush=True)


def rank() -> int:
    """This worker's index in the gang (0 when not a Pylon job)."""
    return int(os.environ.get("PYLON_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("PYLON_WORLD_SIZE", "1"))


def job_name() -> str:
    """``tenants/{t}/jobs/{id}`` of this job ("" outside Pylon)."""
    return os.environ.get("PYLON_JOB", "")


def data_store() -> JobDataSource:
    """The job's data endpoint: ``get(key, start=, end=)``, ``list(prefix)`` and ``put(key, data)``
    on full object keys; pass it to ``pylon.data.ShardReader`` as the source of its shards."""
    from pylon.data.sources import JobDataSource

    url, token = os.environ.get("PYLON_DATA_URL"), os.environ.get("PYLON_DATA_TOKEN")
    if not url or not token:
        raise RuntimeError("not running as a Pylon job: no data endpoint (PYLON_DATA_URL)")
    return JobDataSource(url, token)


def output_prefix() -> str:
    """Where this job's outputs go: ``tenants/{t}/jobs/{id}/output/``."""
    return f"{job_name()}/output/" if job_name() else ""


def dataset_reader(dataset: str, *, seq_len: int, batch_size: int, seed: int = 0, tokenizer: str | None = None,
                   output: str = "torch", state: dict[str, Any] | None = None) -> ShardReader:
    """A ``pylon.data.ShardReader`` over this rank's slice (``world()``) of a tokenized dataset
    version the job names in ``command.datasets`` (e.g. ``tenants/acme/datasets/corpus/versions/3``
    or ``.../versions/latest``), read through the job's data endpoint. ``tokenizer`` picks a
    tokenization when the version has several; ``state`` resumes a reader's ``state_dict()``."""
    from pylon.data.reader import ShardReader

    source = data_store()
    doc = _tokenization(source, dataset, tokenizer)
    index = json.loads(source.get(doc["index_object_key"]))
    w = world()
    return ShardReader(source, doc["shard_prefix"], seq_len=seq_len, batch_size=batch_size, seed=seed, rank=w.rank,
                       world_size=w.world_size, output=output, state=state, index=index)


def _tokenization(source: JobDataSource, dataset: str, tokenizer: str | None) -> dict[str, Any]:
    """The tokenization manifest of ``dataset`` (a version name the job declared)."""
    versions = json.loads(os.environ.get("PYLON_DATASETS") or "{}")
    if dataset not in versions:
        raise ValueError(f"{dataset} is not one of this job's datasets (command.datasets): {sorted(versions)}")
    parts = dataset.split("/")
    tenant = job_name().split("/")[1] if parts[1] == "-" else parts[1]
    folder = f"tenants/{tenant}/datasets/{parts[3]}/tokenizations/{int(versions[dataset]):010d}/"
    if tokenizer is None:
        found = [k for k in source.list(folder) if k.endswith(".json")]
        if len(found) != 1:
            raise ValueError(f"{dataset} has {len(found)} tokenizations; name one with tokenizer= "
                             f"({', '.join(k[len(folder):-5] for k in found) or 'tokenize it first'})")
        key = found[0]
    else:
        key = folder + tokenizer.rsplit("/", 1)[-1] + ".json"
    doc: dict[str, Any] = json.loads(source.get(key))
    return doc
