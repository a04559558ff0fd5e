"""The shard reader against real S3 (SeaweedFS): shards written by write_token_shards through the
services' storage port, read back with pylon.data.S3Source (boto3, ranged GETs) and with the
ObjectStore itself; ranks split the data and a resumed reader continues exactly."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from pylon.data import S3Source, ShardReader
from pylon_services.ingest.domain.pipeline import shard_name, train_tokenizer, write_token_shards
from pylon_services.storage.s3 import S3ObjectStore
from tests.conftest import TEST_BUCKET

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return train_tokenizer((" ".join(rng.choices(words, k=30)) for _ in range(500)), vocab_size=300)


@pytest.fixture
def shards(s3_store: S3ObjectStore, tokenizer) -> tuple[S3ObjectStore, dict]:
    rng = random.Random(1)
    texts = [" ".join(rng.choices(["alpha", "beta", "mu", "zeta", "x"], k=rng.randint(5, 80))) for _ in range(800)]
    index = write_token_shards(texts, tokenizer, lambda i, data: s3_store.put(f"tok/{shard_name(i)}", data),
                               shard_tokens=4096)
    s3_store.put("tok/index.json", json.dumps(index).encode())
    assert len(index["shards"]) >= 4
    return s3_store, index


def s3_source(store: S3ObjectStore, seaweed) -> S3Source:
    return S3Source(TEST_BUCKET, prefix=store.prefix, endpoint_url=seaweed.endpoint_url,
                    aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key,
                    region_name="us-east-1")


def test_reader_streams_from_s3_and_matches_local_plan(shards, seaweed):
    store, index = shards
    source = s3_source(store, seaweed)
    assert source.list("tok/") == ["tok/index.json"] + [f"tok/{s['name']}" for s in index["shards"]]
    via_boto = [b.tolist() for b in ShardReader(source, "tok", seq_len=32, batch_size=4, seed=5)]
    via_port = [b.tolist() for b in ShardReader(store, "tok", seq_len=32, batch_size=4, seed=5)]
    assert via_boto == via_port
    windows = sum(s["tokens"] // 32 for s in index["shards"])
    assert len(via_boto) == windows // 4


def test_ranks_disjoint_and_resume_over_s3(shards, seaweed):
    store, index = shards
    source = s3_source(store, seaweed)
    windows = sum(s["tokens"] // 16 for s in index["shards"])
    per_rank = [ShardReader(source, "tok", seq_len=16, batch_size=1, seed=9, rank=r, world_size=3, even=False)
                for r in range(3)]
    assert sum(len(list(r)) for r in per_rank) == windows  # every window read once, from S3
    original = ShardReader(source, "tok", seq_len=16, batch_size=2, seed=9, rank=2, world_size=3, prefetch=3)
    it = iter(original)
    for _ in range(7):
        next(it)
    state = original.state_dict()
    expected = [b.tolist() for b in itertools.islice(it, 20)]
    resumed = ShardReader(source, "tok", seq_len=16, batch_size=2, seed=9, rank=2, world_size=3, state=state)
    assert [b.tolist() for b in itertools.islice(iter(resumed), 20)] == expected
