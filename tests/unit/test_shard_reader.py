"""pylon.data.ShardReader on a local folder of shards: determinism, disjoint covering splits
across ranks, exact resume from state_dict, prefetch, verification and torch output."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from pylon.data import LocalSource, ShardReader

SEQ = 8


def write_shards(root: Path, sizes: list[int], dtype: str = "uint16") -> dict:
    """Shards whose token at global position p is p (mod 2**16): every window is identifiable."""
    shards, pos = [], 0
    for i, n in enumerate(sizes):
        data = (np.arange(pos, pos + n) % 65536).astype(dtype).tobytes()
        (root / f"shard-{i:06d}.bin").write_bytes(data)
        shards.append({"index": i, "name": f"shard-{i:06d}.bin", "tokens": n, "sha256": hashlib.sha256(data).hexdigest()})
        pos += n
    index = {"format": "pylon-tokens-v1", "shards": shards, "dtype": dtype, "vocab_size": 65536,
             "eos_id": 0, "total_tokens": pos, "shard_tokens": max(sizes)}
    (root / "index.json").write_text(json.dumps(index))
    return index


@pytest.fixture
def shards(tmp_path: Path) -> LocalSource:
    write_shards(tmp_path, [SEQ * 50, SEQ * 50, SEQ * 50 + 3, SEQ * 21])  # 171 windows; tails unused
    return LocalSource(tmp_path)


def starts(batches) -> list[int]:
    """Window identities: the first token of each window."""
    return [int(row[0]) for b in batches for row in b]


def test_windows_are_contiguous_token_runs_and_all_are_yielded(shards):
    reader = ShardReader(shards, seq_len=SEQ, batch_size=1, shuffle=False)
    batches = list(reader)
    assert len(batches) == len(reader) == 171
    for b in batches:
        assert b.shape == (1, SEQ) and b.dtype == np.int64
        assert np.array_equal(b[0], np.arange(b[0, 0], b[0, 0] + SEQ))
    assert starts(batches)[:3] == [0, 8, 16]


def test_same_seed_same_order_other_seed_or_epoch_differs(shards):
    a = starts(ShardReader(shards, seq_len=SEQ, seed=7))
    b = starts(ShardReader(shards, seq_len=SEQ, seed=7))
    c = starts(ShardReader(shards, seq_len=SEQ, seed=8))
    assert a == b
    assert a != c and sorted(a) == sorted(c) and len(set(a)) == 171
    reader = ShardReader(shards, seq_len=SEQ, seed=7)
    first, second = starts(reader), starts(reader)  # the second pass is epoch 1
    assert reader.epoch == 2 and first == a and second != first


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_are_disjoint_and_cover(shards, world):
    per_rank = [starts(ShardReader(shards, seq_len=SEQ, seed=3, rank=r, world_size=world, even=False))
                for r in range(world)]
    everything = [w for ws in per_rank for w in ws]
    assert len(everything) == len(set(everything)) == 171  # disjoint and covering
    even = [starts(ShardReader(shards, seq_len=SEQ, batch_size=2, seed=3, rank=r, world_size=world))
            for r in range(world)]
    assert len({len(e) for e in even}) == 1  # every rank has the same number of batches
    flat = [w for ws in even for w in ws]
    assert len(flat) == len(set(flat)) and 171 - len(flat) < world * 2


def test_exact_resume_from_state(shards):
    for k in (0, 1, 5, 13, 21):  # 13 and 21: mid-shard and across a shard boundary
        original = ShardReader(shards, seq_len=SEQ, batch_size=4, seed=11, rank=1, world_size=2)
        it = iter(original)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(original.state_dict()))  # what a checkpoint stores
        expected = [b.tolist() for b in it] + [b.tolist() for b in itertools.islice(original, 5)]
        resumed = ShardReader(shards, seq_len=SEQ, batch_size=4, seed=11, rank=1, world_size=2, state=state)
        got = [b.tolist() for b in resumed] + [b.tolist() for b in itertools.islice(resumed, 5)]
        assert got == expected, k


def test_resume_refuses_a_different_plan(shards):
    state = ShardReader(shards, seq_len=SEQ, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        ShardReader(shards, seq_len=SEQ, seed=2, state=state)
    with pytest.raises(ValueError, match="world_size"):
        ShardReader(shards, seq_len=SEQ, seed=1, world_size=2, state=state)


def test_corrupted_shard_is_detected(tmp_path):
    write_shards(tmp_path, [SEQ * 4, SEQ * 4 + 3])  # the tail (unused by windows) is verified too
    data = bytearray((tmp_path / "shard-000001.bin").read_bytes())
    data[-1] ^= 1
    (tmp_path / "shard-000001.bin").write_bytes(bytes(data))
    with pytest.raises(OSError, match="sha256"):
        list(ShardReader(LocalSource(tmp_path), seq_len=SEQ, shuffle=False))


def test_uint32_shards_and_torch_output(tmp_path):
    torch = pytest.importorskip("torch")
    write_shards(tmp_path, [SEQ * 6], dtype="uint32")
    batches = list(ShardReader(LocalSource(tmp_path), seq_len=SEQ, batch_size=3, output="torch"))
    assert len(batches) == 2 and isinstance(batches[0], torch.Tensor) and batches[0].dtype == torch.int64
    assert sorted(int(x) for b in batches for x in b[:, 0]) == [0, 8, 16, 24, 32, 40]


def test_local_source_ranges_and_listing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0123456789")
    src = LocalSource(tmp_path)
    assert src.get("a/x.bin", start=2, end=5) == b"234" and src.get("a/x.bin") == b"0123456789"
    assert src.list("a/") == ["a/x.bin"]
    with pytest.raises(ValueError):
        src.get("../escape")


def test_too_little_data_for_one_batch_is_an_error(tmp_path):
    write_shards(tmp_path, [SEQ * 3])
    with pytest.raises(ValueError, match="no full batch"):
        next(iter(ShardReader(LocalSource(tmp_path), seq_len=SEQ, batch_size=2, rank=1, world_size=2)))


@pytest.mark.parametrize("world", [2, 3])
def test_interleaved_ranks_together_see_what_one_reader_of_the_whole_batch_sees(shards, world):
    """Batch k of N interleaved ranks holds the windows of batch k of one reader with N times the
    batch: a data-parallel run matches a 1-worker run of the same global batch."""
    bs = 4
    one = [sorted(row[0] for row in b) for b in ShardReader(shards, seq_len=SEQ, batch_size=bs * world, seed=3)]
    ranks = [list(ShardReader(shards, seq_len=SEQ, batch_size=bs, seed=3, rank=r, world_size=world,
                              layout="interleaved")) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == len(one)
    for k, expected in enumerate(one):
        assert sorted(row[0] for r in ranks for row in r[k]) == expected
    per_rank = [set(starts(r)) for r in ranks]
    assert all(not (a & b) for a, b in itertools.combinations(per_rank, 2))  # disjoint


def test_an_interleaved_reader_resumes_exactly(shards):
    original = ShardReader(shards, seq_len=SEQ, batch_size=3, seed=1, rank=1, world_size=2, layout="interleaved")
    it = iter(original)
    head = [next(it) for _ in range(5)]
    state = original.state_dict()
    rest = [b.tolist() for b in it]
    resumed = ShardReader(shards, seq_len=SEQ, batch_size=3, seed=1, rank=1, world_size=2, layout="interleaved",
                          state=state)
    assert [b.tolist() for b in resumed] == rest and head
    with pytest.raises(ValueError, match="layout"):
        ShardReader(shards, seq_len=SEQ, batch_size=3, seed=1, rank=1, world_size=2, state=state)


def test_holdout_splits_each_shard_into_disjoint_train_and_eval_windows(shards):
    train = set(starts(ShardReader(shards, seq_len=SEQ, seed=2, holdout=0.1)))
    held = set(starts(ShardReader(shards, seq_len=SEQ, seed=2, holdout=0.1, split="eval")))
    assert train and held and not (train & held)
    assert len(train) + len(held) == 171 and len(held) == 5 + 5 + 5 + 2  # int(10% of 50, 50, 50, 21)
    assert sorted(held)[:5] == [SEQ * w for w in range(45, 50)]  # each shard's last windows
