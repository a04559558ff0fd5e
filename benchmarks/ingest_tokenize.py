"""Tokenization throughput: ``write_token_shards`` vs calling tokenizers' ``encode_batch``
directly on the same texts, both using all cores (tokenizers' own thread pool).

Claim: packing ids into fixed-size uint16 shards with EOS, hashing each shard and handing it
to a sink costs little on top of encoding: ours / baseline >= 0.8 in tokens/s.

Corpus: the Python standard library's own source files (ships with every Python), split into
documents at blank lines, so the benchmark needs no download. The tokenizer is a byte-level
BPE trained here by ``train_tokenizer`` (vocab 8192).

    python benchmarks/ingest_tokenize.py             # 16 MB corpus, tokenizer trained on 4 MB
    python benchmarks/ingest_tokenize.py --mb 64     # larger
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sysconfig
import time
from collections.abc import Iterator

from pylon_services.ingest.domain.pipeline import train_tokenizer, write_token_shards


def stdlib_documents(limit_bytes: int) -> list[str]:
    """Paragraphs of the stdlib's .py files, repeated if needed, up to ``limit_bytes``."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) if "site-packages" not in d
                   for f in fs if f.endswith(".py"))
    docs: list[str] = []
    total = 0
    while total < limit_bytes:
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                for para in f.read().split("\n\n"):
                    if para.strip():
                        docs.append(para)
                        total += len(para)
            if total >= limit_bytes:
                break
    return docs


def batches(texts: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(texts), size):
        yield texts[i:i + size]


def baseline(tokenizer, texts: list[str], fast: bool) -> tuple[float, int]:
    encode = tokenizer.encode_batch_fast if fast else tokenizer.encode_batch
    start = time.perf_counter()
    tokens = 0
    for batch in batches(texts, 1024):
        tokens += sum(len(e) for e in encode(batch, add_special_tokens=False))
    return time.perf_counter() - start, tokens


def ours(tokenizer, texts: list[str], shard_dir: str | None) -> tuple[float, int]:
    def sink(index: int, data: bytes) -> None:
        if shard_dir:
            with open(os.path.join(shard_dir, f"shard-{index:06d}.bin"), "wb") as f:
                f.write(data)

    start = time.perf_counter()
    index = write_token_shards(texts, tokenizer, sink, shard_tokens=1 << 20, batch=1024)
    return time.perf_counter() - start, index["total_tokens"] - index["documents"]  # EOS not counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=16, help="corpus size in MB of text")
    parser.add_argument("--train-mb", type=int, default=4, help="text used to train the tokenizer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-dir", default=None, help="also write shards to this folder")
    args = parser.parse_args()
    texts = stdlib_documents(args.mb * 1_000_000)
    mb = sum(len(t) for t in texts) / 1e6
    start = time.perf_counter()
    tokenizer = train_tokenizer(stdlib_documents(args.train_mb * 1_000_000), vocab_size=8192)
    print(f"trained byte-level BPE (vocab {tokenizer.get_vocab_size()}) on {args.train_mb} MB in "
          f"{time.perf_counter() - start:.1f} s; corpus {len(texts)} documents, {mb:.0f} MB; cores {os.cpu_count()}")
    results: dict[str, tuple[float, int]] = {}
    for _ in range(args.repeats):  # interleaved so load from other processes hits all alike
        for name, fn in (("encode_batch", lambda: baseline(tokenizer, texts, False)),
                         ("encode_batch_fast", lambda: baseline(tokenizer, texts, True)),
                         ("write_token_shards", lambda: ours(tokenizer, texts, args.shard_dir))):
            seconds, tokens = fn()
            if name not in results or seconds < results[name][0]:
                results[name] = (seconds, tokens)
    counts = {tokens for _, tokens in results.values()}
    assert len(counts) == 1, f"token counts differ: {results}"
    for name, (seconds, tokens) in results.items():
        print(f"{name:20s}: {tokens / seconds / 1e6:6.2f} M tokens/s ({seconds:.2f} s, {tokens} tokens)")
    ours_s = results["write_token_shards"][0]
    print(f"ratio write_token_shards / encode_batch      : {results['encode_batch'][0] / ours_s:.2f}")
    print(f"ratio write_token_shards / encode_batch_fast : {results['encode_batch_fast'][0] / ours_s:.2f}")
    digest = hashlib.sha256("".join(texts[:100]).encode()).hexdigest()[:12]
    print(f"corpus fingerprint {digest}")


if __name__ == "__main__":
    main()
