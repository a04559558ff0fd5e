"""The work ingest runs on Ray: one task per file (validate, clean, profile, verify the sha256,
store the bytes content-addressed) and one per tokenization. Each streams from and to the
object store (``domain/objio.py``), so a task's memory does not grow with the file.

Tasks report progress to Redis (``pylon:ingest:opprog:{op}``), which the operation's runner
folds into the operation; they never touch the operation itself, so a task of an abandoned run
cannot corrupt the state of the run that replaced it.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from pylon_services.common import blobs
from pylon_services.common.errors import InvalidArgument
from pylon_services.ingest.domain.objio import ObjectReader, ObjectWriter
from pylon_services.storage.base import ObjectExists, ObjectStore

PROGRESS_KEY = "pylon:ingest:opprog:{op}"
_PROGRESS_EVERY_S = 0.5
_BUFFER = 1 << 20
TRAIN_SAMPLE_BYTES = 128 << 20  # text a tokenizer is trained on, at most


def open_task_store(conn: dict[str, Any]) -> ObjectStore:
    from pylon_services.storage.factory import open_store

    return open_store(conn["url"], endpoint_url=conn.get("endpoint_url"), access_key=conn.get("access_key"),
                      secret_key=conn.get("secret_key"), region=conn.get("region", "us-east-1"))


class ProgressReporter:
    """Throttled writes of one task's progress into a Redis hash field."""

    def __init__(self, redis_url: str, op_id: str, field: str) -> None:
        import redis

        # No URL: nobody watches (the task run directly, e.g. by a benchmark or a unit test).
        self._r = redis.Redis.from_url(redis_url) if redis_url else None
        self._key, self._field = PROGRESS_KEY.format(op=op_id), field
        self._last = 0.0

    def __call__(self, value: Any, force: bool = False) -> None:
        now = time.monotonic()
        if self._r is not None and (force or now - self._last >= _PROGRESS_EVERY_S):
            self._last = now
            self._r.hset(self._key, self._field, json.dumps(value))
            self._r.expire(self._key, 86400)

    def close(self) -> None:
        if self._r is not None:
            self._r.close()


def _stream_through(store: ObjectStore, f: dict[str, Any], out_prefix: str, index: int,
                    processing: dict[str, Any], report: Callable[[Any], None]) -> dict[str, Any]:
    """Run ``process_stream`` over one object; returns summary, output locations and the sha256."""
    from pylon_services.ingest.domain.pipeline import DedupeSet, Recipe, process_stream

    size = store.head(f["src_key"]).size
    reader = ObjectReader(store, f["src_key"], size, progress=lambda done: report({"done": done, "total": size}))
    out_raw = ObjectWriter(store, f"{out_prefix}{index:05d}.clean.jsonl")
    rej_raw = ObjectWriter(store, f"{out_prefix}{index:05d}.rejects.jsonl")
    seen = DedupeSet()
    try:
        out, rejects = io.BufferedWriter(out_raw, _BUFFER), io.BufferedWriter(rej_raw, _BUFFER)
        summary = process_stream(io.BufferedReader(reader, _BUFFER), out, rejects, fmt=f["format"],
                                 compression=f["compression"], schema=processing.get("schema") or None,
                                 recipe=Recipe.from_dict(processing["recipe"]), seen=seen)
        out.flush()
        rejects.flush()
        out_raw.close()
        rej_raw.close()
    except BaseException:
        out_raw.abort()
        rej_raw.abort()
        raise
    digest, hashed = reader.finish_hash()
    result = {"summary": summary.to_dict(), "out": out_raw.result(), "rejects": rej_raw.result(),
              "digest": digest, "size": hashed}
    if f.get("dedupe_across") and len(seen):
        dedupe_key = f"{out_prefix}{index:05d}.dedupe"
        store.put(dedupe_key, seen.to_bytes())
        result["dedupe_key"] = dedupe_key
    return result


def process_file(conn: dict[str, Any], redis_url: str, op_id: str, index: int, f: dict[str, Any],
                 processing: dict[str, Any], out_prefix: str) -> dict[str, Any]:
    """Ray task: process file ``index`` of an operation; verify its digest; move uploaded bytes
    to their content address. Raises InvalidArgument when the bytes are not what was declared."""
    store = open_task_store(conn)
    report = ProgressReporter(redis_url, op_id, str(index))
    try:
        result = _stream_through(store, f, out_prefix, index, processing, report)
        if f.get("digest") and f["digest"] != result["digest"]:
            raise InvalidArgument.field(f"files[{index}].digest", f"{f['path']}: declared {f['digest']}, the stored "
                                        f"bytes hash to {result['digest']} (corrupted upload)")
        result["object_key"] = _settle_bytes(store, f, result["digest"])
        report({"done": result["size"], "total": result["size"]}, force=True)
        result["index"] = index
        return result
    finally:
        report.close()


def _settle_bytes(store: ObjectStore, f: dict[str, Any], digest: str) -> str:
    """Where the version will point for the raw bytes: their content address (copied server-side
    from staging or an import source, skipped when already held) or, by reference, the source."""
    if f.get("by_reference"):
        return str(f["src_key"])
    key = blobs.store_blob_from(store, f["tenant"], f["src_key"], digest)
    if f.get("staging"):
        store.delete(f["src_key"])
    return key


def _first_bytes(texts: Iterator[str], limit: int) -> Iterator[str]:
    """The leading texts up to about ``limit`` characters: BPE merges are learned from a sample,
    so training time and memory (the trainer's word counts) do not grow with the version."""
    seen = 0
    for t in texts:
        if seen >= limit:
            return
        seen += len(t)
        yield t


def dedupe_across_files(conn: dict[str, Any], results: list[dict[str, Any]], out_prefix: str) -> list[dict[str, Any]]:
    """Ray task: files were deduped separately in parallel; drop from each file the records an
    earlier file (in version order) kept, rewriting its cleaned output and correcting its summary.
    Memory: the digests of all files' records (~80 B per distinct record), in this task only."""
    from pylon_services.ingest.domain.pipeline import DedupeSet, Summary, cross_file_duplicates, drop_duplicates

    store = open_task_store(conn)
    ordered = sorted(results, key=lambda r: r["index"])
    sets = [DedupeSet.from_bytes(store.get(r["dedupe_key"])) if r.get("dedupe_key") else DedupeSet()
            for r in ordered]
    for r, drop in zip(ordered, cross_file_duplicates(sets), strict=True):
        if len(drop):
            summary = Summary.from_dict(r["summary"])
            src = io.BufferedReader(ObjectReader(store, r["out"]["key"], r["out"]["size"]), _BUFFER)
            raw = ObjectWriter(store, f"{out_prefix}{r['index']:05d}.clean.dedup.jsonl")
            try:
                out = io.BufferedWriter(raw, _BUFFER)
                drop_duplicates(src, out, drop, summary)
                out.flush()
                raw.close()
            except BaseException:
                raw.abort()
                raise
            store.delete(r["out"]["key"])
            r["out"], r["summary"] = raw.result(), summary.to_dict()
        if r.get("dedupe_key"):
            store.delete(r.pop("dedupe_key"))
    return ordered


def iter_texts(store: ObjectStore, keys: list[str], text_field: str = "text") -> Iterator[str]:
    """Texts of cleaned JSONL objects, one record at a time."""
    for key in keys:
        reader = io.BufferedReader(ObjectReader(store, key, store.head(key).size), _BUFFER)
        for line in reader:
            if line.strip():
                yield json.loads(line)[text_field]


def tokenize_version(conn: dict[str, Any], redis_url: str, op_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Ray task: train or reuse a tokenizer, write shards + index, record the tokenization
    manifest create-only. Re-running after a crash rewrites the same keys, then publishes once."""
    from pylon_services.ingest.domain.pipeline import shard_name, train_tokenizer, write_token_shards

    store = open_task_store(conn)
    report = ProgressReporter(redis_url, op_id, "tokenize")
    try:
        sample = spec.get("train_sample_bytes", TRAIN_SAMPLE_BYTES)
        tok, tok_json, trained = _tokenizer(store, spec, lambda: _first_bytes(iter_texts(store, spec["keys"]), sample),
                                            train_tokenizer)
        report({"stage": "encode"}, force=True)
        dtype = "uint16" if tok.get_vocab_size() <= 65536 else "uint32"

        def sink(i: int, data: bytes) -> None:
            store.put(spec["shard_prefix"] + shard_name(i), data)
            report({"stage": "encode", "shards": i + 1})

        index = write_token_shards(iter_texts(store, spec["keys"]), tok, sink, shard_tokens=spec["shard_tokens"],
                                   dtype=dtype)
        index_key = f"{spec['shard_prefix']}index.json"
        store.put(index_key, blobs.dump(index))
        return {"index": index, "index_key": index_key, "tokenizer_key": spec["tokenizer_key"],
                "tokenizer_digest": "sha256:" + hashlib.sha256(tok_json.encode()).hexdigest(),
                "trained": trained}
    finally:
        report.close()


def _tokenizer(store: ObjectStore, spec: dict[str, Any], texts: Callable[[], Iterator[str]],
               train: Callable[..., Any]) -> tuple[Any, str, bool]:
    """The stored tokenizer named in ``spec``, or a new one trained on the version and stored
    create-only under that name (a concurrent trainer's tokenizer wins; we then use it)."""
    from tokenizers import Tokenizer

    key = spec["tokenizer_key"]
    stored = store.get(key).decode() if store.exists(key) else None
    if stored is None:
        tok_json = train(texts(), vocab_size=spec["vocab_size"]).to_str()
        try:
            store.put(key, tok_json.encode(), if_none_match=True)
            return Tokenizer.from_str(tok_json), tok_json, True
        except ObjectExists:
            stored = store.get(key).decode()
    return Tokenizer.from_str(stored), stored, False
