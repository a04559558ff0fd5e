"""``common.tokenizers.fingerprint``: the same tokenizer fingerprints the same however it was
written (ingest's ``Tokenizer.to_str()`` or transformers' ``save_pretrained``), and a tokenizer
that encodes text to other ids does not."""

from __future__ import annotations

import json

import pytest

from pylon_services.common.tokenizers import NotATokenizer, fingerprint
from pylon_services.ingest.domain.tokenize import EOS_TOKEN, train_tokenizer

TEXT = [f"the quick brown fox {i} jumps over the lazy dog number {i % 13}" for i in range(400)]


@pytest.fixture(scope="module")
def ingest_json() -> str:
    return str(train_tokenizer(iter(TEXT), vocab_size=320).to_str())


def test_a_tokenizer_saved_by_transformers_fingerprints_as_ingests(ingest_json, tmp_path):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(ingest_json), eos_token=EOS_TOKEN)
    fast.save_pretrained(str(tmp_path))
    saved = (tmp_path / "tokenizer.json").read_text()
    assert saved != ingest_json  # really written another way...
    assert fingerprint(saved) == fingerprint(ingest_json) == fingerprint(ingest_json.encode())  # ...same ids
    reloaded = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert reloaded(TEXT[0])["input_ids"] == Tokenizer.from_str(ingest_json).encode(TEXT[0]).ids


def test_key_order_and_whitespace_do_not_matter(ingest_json):
    doc = json.loads(ingest_json)
    shuffled = json.dumps(dict(reversed(list(doc.items()))), indent=4)
    assert fingerprint(shuffled) == fingerprint(ingest_json)


def test_another_vocabulary_or_added_token_fingerprints_differently(ingest_json):
    other = str(train_tokenizer(iter(t.upper() for t in TEXT), vocab_size=320).to_str())
    assert fingerprint(other) != fingerprint(ingest_json)
    doc = json.loads(ingest_json)
    doc["added_tokens"].append({"id": 9999, "content": "<|pad|>", "special": True})
    assert fingerprint(json.dumps(doc)) != fingerprint(ingest_json)
    doc = json.loads(ingest_json)
    doc["model"]["merges"] = doc["model"]["merges"][:-1]
    assert fingerprint(json.dumps(doc)) != fingerprint(ingest_json)


@pytest.mark.parametrize("text", ["not json", "[]", '{"model": {"type": "BPE"}}', b"\xff\xfe"])
def test_what_is_not_a_tokenizer_is_said_so(text):
    with pytest.raises(NotATokenizer):
        fingerprint(text)
