"""The training-side shard reader: fixed-length token windows from the shards that ingest's
``TokenizeDataset`` wrote (``index.json`` + ``shard-NNNNNN.bin``).

How an epoch is planned (all of it a pure function of seed, epoch and the index, so every rank
and every restart computes the same plan without talking to anyone):

1. each shard of ``t`` tokens holds ``t // seq_len`` non-overlapping windows (the tail is unused);
2. shards are put in a seeded random order, and the windows inside each shard in a seeded
   random order of their own; concatenated, that is the epoch's global sequence of windows;
3. rank ``r`` of ``world_size`` takes one contiguous slice of that sequence (``layout=
   "contiguous"``, the default: slices touch few shards each, so a rank reads only its own
   shards), or every ``world_size``-th window starting at ``r`` (``layout="interleaved"``: batch
   ``k`` of all ranks together holds the same windows whatever the world size, so a run on N
   workers sees the data a 1-worker run of N times the batch sees; each rank then reads every
   shard). Either way slices are disjoint and cover the sequence (with ``even=True``, the
   default, up to ``world_size - 1`` windows are left out so every rank has the same number of
   batches, which data-parallel training needs);
4. windows are grouped into batches of ``batch_size`` (a last partial batch is dropped).

``holdout`` keeps the last fraction of each shard's windows out of the ``split="train"`` reader
and gives exactly those to a ``split="eval"`` reader: a held-out set that never trains, with no
second copy of the data.

The reader's position is the number of windows this rank has yielded in the current epoch;
``state_dict()`` saves it and ``load_state_dict()`` (or ``ShardReader(..., state=...)``)
continues exactly where the saved reader would have. Shards are fetched ahead on background
threads (``prefetch``) with ranged reads that cover only this rank's windows; a shard read
whole is checked against its sha256 in the index (``verify``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pylon.data.sources import ObjectSource

STATE_VERSION = 1
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


@dataclass(frozen=True)
class Segment:
    """A run of one shard's windows in this rank's sequence: ``windows`` are window numbers
    inside the shard, in the order they are yielded."""

    shard: int
    windows: np.ndarray


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name


class ShardReader:
    """Iterate fixed-length token windows, batched, for one data-parallel rank.

    ``source`` is any object with ``get(key, start=, end=)`` (see ``pylon.data.sources``; a
    services ``ObjectStore`` works too); ``prefix`` is the folder holding ``index.json``. Iterating yields
    arrays of shape ``(batch_size, seq_len)`` (``int64``; torch tensors with
    ``output="torch"``) until the end of the current epoch, then moves to the next epoch.
    """

    def __init__(self, source: ObjectSource, prefix: str = "", *, seq_len: int, batch_size: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True, even: bool = True,
                 prefetch: int = 2, output: str = "numpy", verify: bool = True,
                 state: dict[str, Any] | None = None, index: dict[str, Any] | None = None,
                 layout: str = "contiguous", holdout: float = 0.0, split: str = "train") -> None:
        if seq_len < 1 or batch_size < 1 or prefetch < 1:
            raise ValueError("seq_len, batch_size and prefetch must be positive")
        if layout not in ("contiguous", "interleaved"):
            raise ValueError("layout must be 'contiguous' or 'interleaved'")
        if not 0.0 <= holdout < 1.0 or split not in ("train", "eval"):
            raise ValueError("holdout must be in [0, 1) and split 'train' or 'eval'")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        if output not in ("numpy", "torch"):
            raise ValueError("output must be 'numpy' or 'torch'")
        self.source, self.prefix = source, prefix
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.even = rank, world_size, shuffle, even
        self.prefetch, self.output, self.verify = prefetch, output, verify
        self.layout, self.holdout, self.split = layout, holdout, split
        self.index = index if index is not None else json.loads(source.get(_join(prefix, "index.json")))
        self.dtype = np.dtype(_DTYPES[self.index["dtype"]]).newbyteorder("<")
        self.shards = self.index["shards"]
        # Per shard: the first window this split uses and how many (holdout splits each shard).
        self.first_window, self.windows_per_shard = [], []
        for s in self.shards:
            n = s["tokens"] // seq_len
            held = int(n * holdout)
            first, count = (0, n - held) if split == "train" else (n - held, held)
            self.first_window.append(first)
            self.windows_per_shard.append(count)
        self.epoch, self.position = 0, 0
        if state is not None:
            self.load_state_dict(state)

    # -- plan -------------------------------------------------------------------------------

    def _slice(self) -> tuple[int, int]:
        """[lo, hi) of this rank in the epoch's global window sequence (contiguous layout)."""
        total, w, r = sum(self.windows_per_shard), self.world_size, self.rank
        if self.layout == "interleaved":
            limit = total - total % w if self.even else total
            return 0, len(range(r, limit, w))
        if self.even:
            per = total // w
            return r * per, (r + 1) * per
        return (r * total) // w, ((r + 1) * total) // w

    def windows_per_epoch(self) -> int:
        lo, hi = self._slice()
        return hi - lo

    def __len__(self) -> int:
        """Batches this rank yields in a full epoch."""
        return self.windows_per_epoch() // self.batch_size

    def plan(self, epoch: int) -> list[Segment]:
        """This rank's windows for ``epoch``, as per-shard segments in yield order."""
        if self.layout == "interleaved":
            return self._plan_interleaved(epoch)
        lo, hi = self._slice()
        segments, start = [], 0
        for s in self._order(epoch):
            count = self.windows_per_shard[s]
            end = start + count
            if end > lo and start < hi and count:
                perm = self._windows_of(epoch, s)
                segments.append(Segment(int(s), perm[max(lo - start, 0):min(hi, end) - start]))
            start = end
            if start >= hi:
                break
        return segments

    def _plan_interleaved(self, epoch: int) -> list[Segment]:
        """Global positions ``rank, rank + W, ...`` below the even limit, per shard in order."""
        total, w = sum(self.windows_per_shard), self.world_size
        limit = total - total % w if self.even else total
        segments, start = [], 0
        for s in self._order(epoch):
            count = self.windows_per_shard[s]
            end = min(start + count, limit)
            first = start + (self.rank - start) % w  # the first position of this rank at or after start
            if first < end:
                segments.append(Segment(int(s), self._windows_of(epoch, s)[first - start:end - start:w]))
            start += count
            if start >= limit:
                break
        return segments

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.shards)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def _windows_of(self, epoch: int, shard: int) -> np.ndarray:
        """The window numbers of this split in ``shard``, in the epoch's order."""
        count = self.windows_per_shard[shard]
        perm = (np.random.default_rng([self.seed, epoch, int(shard)]).permutation(count) if self.shuffle
                else np.arange(count))
        return perm + self.first_window[shard]

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position to store in a checkpoint (plain JSON-able values)."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "even": self.even,
                "total_tokens": self.index.get("total_tokens"), "layout": self.layout, "holdout": self.holdout,
                "split": self.split}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; the plan inputs must match or the windows would not."""
        for key in ("seed", "world_size", "rank", "seq_len", "shuffle", "even", "total_tokens", "layout", "holdout",
                    "split"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"cannot resume: saved {key}={state[key]!r} but this reader has {mine!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # -- reading ----------------------------------------------------------------------------

    def _fetch(self, seg: Segment) -> np.ndarray:
        """The windows of one segment as a (len, seq_len) array, from one ranged read."""
        size, item = self.seq_len, self.dtype.itemsize
        meta = self.shards[seg.shard]
        key = _join(self.prefix, meta.get("name", f"shard-{seg.shard:06d}.bin"))
        # A segment with all of a shard's windows reads the whole object (tail included) so its
        # sha256 can be checked; a partial one reads just the span of its windows.
        whole = self.verify and len(seg.windows) == self.windows_per_shard[seg.shard]
        first = 0 if whole else int(seg.windows.min())
        last = int(seg.windows.max())
        start, end = (0, meta["tokens"] * item) if whole else (first * size * item, (last + 1) * size * item)
        data = self.source.get(key, start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"short read of {key}: wanted {end - start} bytes, got {len(data)}")
        if whole and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise OSError(f"shard {key} does not match its sha256 in the index (corrupted)")
        arr = np.frombuffer(data, dtype=self.dtype)[: (last + 1 - first) * size]
        return arr.reshape(-1, size)[seg.windows - first]

    def _segments_from(self, position: int) -> list[Segment]:
        """The plan of the current epoch with the first ``position`` windows removed."""
        out, skip = [], position
        for seg in self.plan(self.epoch):
            if skip >= len(seg.windows):
                skip -= len(seg.windows)
                continue
            out.append(Segment(seg.shard, seg.windows[skip:]) if skip else seg)
            skip = 0
        return out

    def _windows(self, segments: list[Segment]) -> Iterator[np.ndarray]:
        """Arrays of windows per segment, fetched ``prefetch`` segments ahead."""
        pool = ThreadPoolExecutor(self.prefetch, thread_name_prefix="pylon-shard-prefetch")
        try:
            ahead: list[Future[np.ndarray]] = []
            it = iter(segments)
            for seg in it:
                ahead.append(pool.submit(self._fetch, seg))
                if len(ahead) > self.prefetch:
                    break
            while ahead:
                arr = ahead.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    ahead.append(pool.submit(self._fetch, nxt))
                yield arr
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[Any]:
        """Batches from the current position to the end of the epoch; then the next epoch."""
        bs = self.batch_size
        limit = (self.windows_per_epoch() // bs) * bs
        if limit == 0:  # an epoch with no batch would make an endless training loop spin silently
            raise ValueError(f"rank {self.rank}/{self.world_size} gets no full batch of {bs} x {self.seq_len} tokens "
                             f"from {self.index.get('total_tokens')} tokens; lower seq_len, batch_size or world_size")
        pending: list[np.ndarray] = []
        have = 0
        for arr in self._windows(self._segments_from(self.position)):
            pending.append(arr)
            have += len(arr)
            while have >= bs and self.position + bs <= limit:
                rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
                batch, rest = rows[:bs], rows[bs:]
                pending, have = ([rest] if len(rest) else []), len(rest)
                self.position += bs
                yield self._convert(batch)
            if self.position + bs > limit:
                break
        self.epoch, self.position = self.epoch + 1, 0

    def _convert(self, batch: np.ndarray) -> Any:
        out = batch.astype(np.int64)
        if self.output == "torch":
            import torch  # lazy: the SDK does not require torch

            return torch.from_numpy(out)
        return out
