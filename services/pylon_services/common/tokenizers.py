"""Which tokenizer a ``tokenizer.json`` is, independent of how it was written (torch-free, no
``tokenizers`` import: the scheduler's API compares a base model's tokenizer with a dataset's).

Ingest stores the ``Tokenizer.to_str()`` of the tokenizer it trained; a model saved by
transformers' ``save_pretrained`` re-serializes it (other whitespace, key order, a post-processor
or padding settings of its own). Two files encode text to the same ids when their model (type,
vocabulary, merges) and their added tokens (content and id) are the same, so the fingerprint is a
digest of exactly those.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# The parts of a tokenizer's ``model`` section that decide which ids text becomes.
_MODEL_KEYS = ("type", "vocab", "merges", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
               "byte_fallback", "ignore_merges")


class NotATokenizer(ValueError):
    """The text is not a ``tokenizer.json`` (not JSON, or without a ``model`` section)."""


def fingerprint(tokenizer_json: str | bytes) -> str:
    """``sha256:<hex>`` of the canonical JSON of the tokenizer's model (type, vocab, merges and
    the few settings that change ids) and its added tokens (content, id), so a file re-serialized
    by another writer fingerprints the same. Raises NotATokenizer for anything else."""
    try:
        doc = json.loads(tokenizer_json)
    except (ValueError, UnicodeDecodeError) as e:
        raise NotATokenizer(f"not JSON: {e}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or "vocab" not in model:
        raise NotATokenizer("no 'model' section with a vocabulary")
    canonical = {
        "model": {k: _merges(model[k]) if k == "merges" else model[k] for k in _MODEL_KEYS if model.get(k) is not None},
        "added_tokens": sorted((str(t.get("content", "")), int(t.get("id", -1)))
                               for t in doc.get("added_tokens") or () if isinstance(t, dict)),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _merges(merges: Any) -> Any:
    """BPE merges in one form: tokenizers writes them as "a b" strings or as ["a", "b"] pairs,
    depending on its version."""
    if not isinstance(merges, list):
        return merges
    return [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]
