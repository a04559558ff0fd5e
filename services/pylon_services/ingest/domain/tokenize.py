"""Tokenizer training and token shards.

A shard is a flat little-endian array of token ids (``dtype``), documents separated by the EOS
id, ``shard_tokens`` ids long (the last one shorter). The index (``index.json``) lists the
shards with their token counts and sha256, so a reader can plan, verify and resume without
listing storage. ``pylon.data.ShardReader`` reads exactly this format.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

EOS_TOKEN = "<|endoftext|>"
INDEX_FORMAT = "pylon-tokens-v1"
DTYPES: dict[str, Any] = {"uint16": np.uint16, "uint32": np.uint32}


def shard_name(index: int) -> str:
    """Object name of shard ``index``, relative to the index's folder (``index.json``)."""
    return f"shard-{index:06d}.bin"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, *, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE tokenizer (GPT-2 style: any byte sequence encodes, no unknown
    token) with ``<|endoftext|>`` as its EOS; training streams ``texts`` and uses all cores."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise ValueError("vocab_size must be at least 258 (256 bytes + EOS + one merge)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(serialized: str) -> Any:
    """A stored tokenizer (``Tokenizer.to_str()``) back, to reuse it on another version."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(serialized)


def find_eos(tokenizer: Any) -> int:
    """The id of the tokenizer's end-of-document token."""
    for name in (EOS_TOKEN, "</s>", "<eos>", "[SEP]"):
        found = tokenizer.token_to_id(name)
        if found is not None:
            return int(found)
    raise ValueError(f"tokenizer has no end-of-document token ({EOS_TOKEN!r} or </s>); pass eos_id")


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(itertools.islice(it, size)):
        yield batch


class _ShardBuffer:
    """Fills fixed-size shards and hands each full one to the sink on a background thread, so
    storage writes overlap encoding; at most two shards are in flight (bounded memory)."""

    def __init__(self, sink: Callable[[int, bytes], None], shard_tokens: int, dtype: Any) -> None:
        self.sink, self.size, self.dtype = sink, shard_tokens, dtype
        self.buf = np.empty(shard_tokens, dtype=dtype)
        self.fill = 0
        self.shards: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pylon-shard-sink")
        self._inflight: list[Future[None]] = []

    def add(self, ids: np.ndarray) -> None:
        pos = 0
        while pos < len(ids):
            take = min(len(ids) - pos, self.size - self.fill)
            self.buf[self.fill:self.fill + take] = ids[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == self.size:
                self._emit()

    def _emit(self) -> None:
        data = self.buf[:self.fill].tobytes()
        index = len(self.shards)
        self.shards.append({"index": index, "name": shard_name(index), "tokens": self.fill,
                            "sha256": hashlib.sha256(data).hexdigest()})
        self.fill = 0
        while len(self._inflight) >= 2:
            self._inflight.pop(0).result()
        self._inflight.append(self._pool.submit(self.sink, index, data))

    def close(self) -> None:
        try:
            if self.fill:
                self._emit()
            for fut in self._inflight:
                fut.result()
        finally:
            self._pool.shutdown(wait=True)


def write_token_shards(
    texts: Iterable[str],
    tokenizer: Any,
    sink: Callable[[int, bytes], None],
    *,
    shard_tokens: int = 1 << 20,
    dtype: str = "uint16",
    batch: int = 1024,
    eos_id: int | None = None,
) -> dict:
    """Encode ``texts`` into shards of ``shard_tokens`` ids (EOS after each document) and call
    ``sink(shard_index, bytes)`` for each; returns the index (see module doc).

    Batches are encoded by tokenizers' parallel batch encoder (all cores) while this thread
    packs the previous batch into the shard buffer, so packing overlaps encoding.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    if shard_tokens < 1 or batch < 1:
        raise ValueError("shard_tokens and batch must be positive")
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > np.iinfo(DTYPES[dtype]).max + 1:
        raise ValueError(f"vocab_size {vocab} does not fit {dtype}; use uint32")
    eos = find_eos(tokenizer) if eos_id is None else eos_id
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    out = _ShardBuffer(sink, shard_tokens, DTYPES[dtype])
    documents = total = 0
    with ThreadPoolExecutor(1, thread_name_prefix="pylon-encode") as pool:
        try:
            batches = _batches(texts, batch)
            pending = _submit_next(pool, encode, batches)
            while pending is not None:
                encodings = pending.result()
                pending = _submit_next(pool, encode, batches)  # encode the next while packing this
                ids = _flatten(encodings, eos, DTYPES[dtype])
                documents += len(encodings)
                total += len(ids)
                out.add(ids)
        finally:
            out.close()
    return {
        "format": INDEX_FORMAT, "shards": out.shards, "dtype": dtype, "vocab_size": vocab,
        "eos_id": eos, "total_tokens": total, "shard_tokens": shard_tokens, "documents": documents,
    }


def _submit_next(pool: ThreadPoolExecutor, encode: Callable[..., Any], batches: Iterator[list[str]]) -> Future[Any] | None:
    texts = next(batches, None)
    if texts is None:
        return None
    return pool.submit(encode, texts, add_special_tokens=False)


def _flatten(encodings: list[Any], eos: int, dtype: Any) -> np.ndarray:
    flat: list[int] = []
    extend, append = flat.extend, flat.append
    for enc in encodings:
        extend(enc.ids)
        append(eos)
    return np.array(flat, dtype=dtype)
