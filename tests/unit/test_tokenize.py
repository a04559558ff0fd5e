"""Tokenizer training, reuse of a stored tokenizer, and token shards read back by pylon.data."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from pylon.data import LocalSource, ShardReader
from pylon_services.ingest.domain.pipeline import load_tokenizer, shard_name, train_tokenizer, write_token_shards

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bold jumbo pies".split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus(2000), vocab_size=400)


def test_byte_level_bpe_round_trips_any_text(tokenizer):
    assert tokenizer.get_vocab_size() <= 400 and tokenizer.token_to_id("<|endoftext|>") is not None
    for text in ["the lazy dog.", "Ünïcödé ✓ 日本語 and bytes \x00\x7f", "  spaces\tand\nnewlines "]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    # merges were learnt: a frequent word is one token, not its letters
    assert len(tokenizer.encode("the", add_special_tokens=False).ids) == 1


def test_stored_tokenizer_is_reused_unchanged(tokenizer):
    again = load_tokenizer(tokenizer.to_str())
    text = " ".join(corpus(5, seed=9))
    assert again.encode(text).ids == tokenizer.encode(text).ids


def test_shards_are_fixed_size_with_eos_between_documents(tokenizer):
    texts = corpus(300, seed=1)
    stored: dict[int, bytes] = {}
    index = write_token_shards(iter(texts), tokenizer, stored.__setitem__, shard_tokens=1000, batch=64)
    eos = tokenizer.token_to_id("<|endoftext|>")
    expected = []
    for t in texts:
        expected += tokenizer.encode(t, add_special_tokens=False).ids + [eos]
    assert index["total_tokens"] == len(expected) and index["eos_id"] == eos and index["documents"] == 300
    assert index["dtype"] == "uint16" and index["vocab_size"] == tokenizer.get_vocab_size()
    assert [s["tokens"] for s in index["shards"][:-1]] == [1000] * (len(index["shards"]) - 1)
    assert 0 < index["shards"][-1]["tokens"] <= 1000
    assert sorted(stored) == [s["index"] for s in index["shards"]]
    for s in index["shards"]:
        assert hashlib.sha256(stored[s["index"]]).hexdigest() == s["sha256"] and s["name"] == shard_name(s["index"])
    flat = np.concatenate([np.frombuffer(stored[i], dtype="<u2") for i in sorted(stored)])
    assert flat.tolist() == expected


def test_uint32_and_bad_arguments(tokenizer):
    stored: dict[int, bytes] = {}
    index = write_token_shards(["a b c"] * 3, tokenizer, stored.__setitem__, dtype="uint32", shard_tokens=4)
    assert index["dtype"] == "uint32" and sum(len(b) for b in stored.values()) == 4 * index["total_tokens"]
    with pytest.raises(ValueError, match="dtype"):
        write_token_shards(["x"], tokenizer, stored.__setitem__, dtype="int8")
    big = train_tokenizer(corpus(50), vocab_size=300)
    big.add_tokens([f"tok{i}" for i in range(66000)])
    with pytest.raises(ValueError, match="uint32"):
        write_token_shards(["x"], big, stored.__setitem__)


def test_a_failing_sink_fails_the_whole_write(tokenizer):
    def sink(i: int, data: bytes) -> None:
        if i == 1:
            raise OSError("storage down")

    with pytest.raises(OSError, match="storage down"):
        write_token_shards(corpus(200), tokenizer, sink, shard_tokens=500)


def test_shards_feed_the_reader(tokenizer, tmp_path: Path):
    def sink(i: int, data: bytes) -> None:
        (tmp_path / shard_name(i)).write_bytes(data)

    index = write_token_shards(corpus(500, seed=2), tokenizer, sink, shard_tokens=2048)
    (tmp_path / "index.json").write_text(json.dumps(index))
    reader = ShardReader(LocalSource(tmp_path), seq_len=64, batch_size=8, seed=0)
    batches = list(reader)
    assert len(batches) == len(reader) > 0
    assert all(b.shape == (8, 64) and int(b.max()) < index["vocab_size"] for b in batches)


def test_profile_counts_exact_tokens_with_a_tokenizer(tokenizer):
    import io

    from pylon_services.ingest.domain.pipeline import Recipe, process_stream

    texts = corpus(700, seed=4)  # more than one counting batch
    data = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)
    summary = process_stream(io.BytesIO(data), io.BytesIO(), io.BytesIO(), fmt="jsonl", compression="",
                             schema=None, recipe=Recipe(dedupe=False), tokenizer=tokenizer)
    expected = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
    assert summary.profile["tokens"] == expected and summary.profile["tokens_estimated"] is False
