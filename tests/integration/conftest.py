"""Data the integration tests of the causal-lm trainer share, made once per session."""

from __future__ import annotations

import json
from typing import Any

import pytest


@pytest.fixture(scope="session")
def corpus(tenant_clients: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tokenized dataset version of acme (its name): "lm-docs", BPE with a 512-token
    vocabulary, for causal-lm jobs and fine-tunes."""
    from pylon.demo_corpus import build_corpus

    acme = tenant_clients["acme"]
    path = tmp_path_factory.mktemp("lm") / "docs.jsonl"
    with open(path, "w") as f:
        for line in build_corpus(max_bytes=120_000).split("\n"):
            if line.strip():
                f.write(json.dumps({"text": line}) + "\n")
    ds = acme.datasets.upload(str(path), "lm-docs")
    acme.datasets.tokenize("lm-docs", ds.version, tokenizer="lm-bpe", vocab_size=512, shard_tokens=4096)
    return f"tenants/acme/datasets/lm-docs/versions/{ds.version}"
