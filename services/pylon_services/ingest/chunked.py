"""Chunk-level parallelism inside one file: plan the chunks, process each as its own Ray task,
hash the whole file alongside, then merge the chunks back into the one result ``process_file``
would have produced (same cleaned bytes, same rejects with absolute line numbers, same counts).

Why the merge streams the chunk outputs into one object instead of composing them server-side
(S3 UploadPartCopy): the manifest records the sha256 of every cleaned and rejects file, and a
sha256 cannot be combined from the hashes of the parts, so the bytes have to pass through one
process anyway. The merge also applies the cross-chunk dedupe (records an earlier chunk kept)
in that same pass and rewrites reject line numbers, holding one buffer and the dedupe digests.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from pylon_services.common.errors import InvalidArgument
from pylon_services.ingest.domain.objio import READ_CHUNK, ObjectReader, ObjectWriter
from pylon_services.ingest.processing import (
    ProgressReporter,
    _settle_bytes,
    open_task_store,
)
from pylon_services.storage.base import ObjectStore

_BUFFER = 1 << 20


def plan_file(conn: dict[str, Any], f: dict[str, Any], processing: dict[str, Any], chunk_bytes: int) -> dict[str, Any]:
    """Ray task: the chunks of one file (``parts``; one part means: do not split) and, when the
    user gave none, the schema inferred from the file's head, which every chunk must share."""
    from pylon_services.ingest.domain import chunks, formats
    from pylon_services.ingest.domain.pipeline import Recipe, _line_limit, infer_schema
    from pylon_services.ingest.domain.validate import normalize_schema

    store = open_task_store(conn)
    recipe = Recipe.from_dict(processing["recipe"])
    size = store.head(f["src_key"]).size
    one = {"parts": [chunks.Part().to_dict()]}
    if size <= chunk_bytes or not chunks.splittable(f["format"], f["compression"], recipe.paragraphs):
        return one
    if f["format"] == "parquet":
        parts = _parquet_parts(store, f["src_key"], size, chunk_bytes)
    else:
        parts = [chunks.Part(index=k, start=s, end=e) for k, (s, e) in enumerate(chunks.byte_ranges(size, chunk_bytes))]
    if len(parts) < 2:
        return one
    given = processing.get("schema") or None
    with io.BufferedReader(ObjectReader(store, f["src_key"], size), _BUFFER) as src:
        schema = normalize_schema(given) if given else infer_schema(src, f["format"], "", recipe=recipe)
    if f["format"] == "csv":
        with io.BufferedReader(ObjectReader(store, f["src_key"], size), _BUFFER) as src:
            header = formats.csv_header(src, "", _line_limit(recipe))
        for p in parts[1:]:
            p.header = header
    return {"parts": [p.to_dict() for p in parts], "schema": schema}


def _parquet_parts(store: ObjectStore, key: str, size: int, chunk_bytes: int) -> list[Any]:
    """Row groups packed by compressed size; each part knows the number of its first row."""
    import pyarrow.parquet as pq

    from pylon_services.ingest.domain import chunks

    with pq.ParquetFile(ObjectReader(store, key, size)) as pf:
        md = pf.metadata
        groups = [md.row_group(i) for i in range(md.num_row_groups)]
        sizes = [sum(g.column(c).total_compressed_size for c in range(g.num_columns)) for g in groups]
        rows = [g.num_rows for g in groups]
    return [chunks.Part(index=k, row_groups=rg, first_row=first)
            for k, (rg, first) in enumerate(chunks.row_group_chunks(sizes, rows, chunk_bytes))]


def process_chunk(conn: dict[str, Any], redis_url: str, op_id: str, index: int, f: dict[str, Any],
                  processing: dict[str, Any], schema: dict[str, Any], out_prefix: str,
                  part_dict: dict[str, Any]) -> dict[str, Any]:
    """Ray task: validate, clean and profile one chunk of file ``index`` into its own cleaned and
    rejects objects (rejects numbered relative to the chunk) and its dedupe digests."""
    from pylon_services.ingest.domain.chunks import Part
    from pylon_services.ingest.domain.pipeline import DedupeSet, Recipe, process_stream

    store = open_task_store(conn)
    part = Part.from_dict(part_dict)
    name = f"{out_prefix}{index:05d}.{part.index:05d}"
    report = ProgressReporter(redis_url, op_id, f"{index}.{part.index}")
    size = store.head(f["src_key"]).size
    end = size if part.end < 0 else part.end
    reader = ObjectReader(store, f["src_key"], size,
                          progress=lambda pos: report({"done": min(max(pos - part.start, 0), end - part.start)}))
    out_raw, rej_raw = ObjectWriter(store, f"{name}.clean.jsonl"), ObjectWriter(store, f"{name}.rejects.jsonl")
    recipe = Recipe.from_dict(processing["recipe"])
    seen = DedupeSet(ordered=True)
    try:
        out, rejects = io.BufferedWriter(out_raw, _BUFFER), io.BufferedWriter(rej_raw, _BUFFER)
        summary = process_stream(reader, out, rejects, fmt=f["format"], compression="", schema=schema,  # type: ignore[arg-type]
                                 recipe=recipe, seen=seen, part=part)
        out.flush()
        rejects.flush()
        out_raw.close()
        rej_raw.close()
        result = {"part": part.index, "summary": summary.to_dict(), "out": out_raw.result(),
                  "rejects": rej_raw.result(), "lines": part.lines, "multiline": part.multiline}
        if recipe.dedupe and len(seen):
            store.put(f"{name}.dedupe", seen.ordered_bytes())  # output order: the merge drops by position
            result["dedupe_key"] = f"{name}.dedupe"
        report({"done": max(end - part.start, 0)}, force=True)
        return result
    except BaseException:
        out_raw.abort()
        rej_raw.abort()
        raise
    finally:
        report.close()


def hash_file(conn: dict[str, Any], index: int, f: dict[str, Any]) -> dict[str, Any]:
    """Ray task: the sha256 of a chunked file, read once in order alongside its chunks; raises
    InvalidArgument when it is not the digest the client declared (a corrupted upload)."""
    store = open_task_store(conn)
    size = store.head(f["src_key"]).size
    digest, hashed = ObjectReader(store, f["src_key"], size).finish_hash()
    if f.get("digest") and f["digest"] != digest:
        raise InvalidArgument.field(f"files[{index}].digest", f"{f['path']}: declared {f['digest']}, the stored "
                                    f"bytes hash to {digest} (corrupted upload)")
    return {"digest": digest, "size": hashed}


def merge_chunks(conn: dict[str, Any], index: int, f: dict[str, Any], parts: Iterable[dict[str, Any]],
                 hashed: Callable[[], dict[str, Any]], out_prefix: str) -> dict[str, Any]:
    """Ray task: one file's result from its chunks, as ``process_file`` returns it: the cleaned
    outputs concatenated in order without the records an earlier chunk kept, the rejects with
    absolute line numbers, the summaries merged, the raw bytes settled at their content address.

    ``parts`` yields the chunk results in chunk order as they complete (the runner passes a
    generator over Ray refs, so merging overlaps with the chunks still running); ``hashed()``
    gives the file's digest at the end. A CSV chunk that met a record spanning lines stops the
    merge: the result is ``{"index", "unsplit": True}`` and the file must be processed whole.
    Memory: one buffer plus the file's dedupe digests (as a one-chunk run holds them)."""
    from pylon_services.ingest.domain.pipeline import Summary, merge_summaries

    store = open_task_store(conn)
    out_raw = ObjectWriter(store, f"{out_prefix}{index:05d}.clean.jsonl")
    rej_raw = ObjectWriter(store, f"{out_prefix}{index:05d}.rejects.jsonl")
    try:
        summaries, kept, seen = _concatenate(store, parts, out_raw, rej_raw)
    except BaseException:
        out_raw.abort()
        rej_raw.abort()
        raise
    if summaries is None:
        return {"index": index, "unsplit": True}
    digest = hashed()
    merged = merge_summaries([Summary.from_dict(s) for s in summaries])
    result = {"summary": merged.to_dict(), "out": out_raw.result(), "rejects": rej_raw.result(),
              "digest": digest["digest"], "size": digest["size"], "index": index, "chunks": len(seen)}
    if f.get("dedupe_across") and len(kept):
        result["dedupe_key"] = f"{out_prefix}{index:05d}.dedupe"
        store.put(result["dedupe_key"], kept.to_bytes())
    result["object_key"] = _settle_bytes(store, f, digest["digest"])
    delete_chunk_outputs(store, seen)
    return result


def _concatenate(store: ObjectStore, parts: Iterable[dict[str, Any]], out_raw: ObjectWriter,
                 rej_raw: ObjectWriter) -> tuple[list[dict[str, Any]] | None, Any, list[dict[str, Any]]]:
    """Append the chunks in order to the two writers and close them; (corrected summaries, the
    digests kept, the parts seen), or (None, ...) after aborting when a chunk says ``multiline``."""
    from pylon_services.ingest.domain.clean import DedupeSet
    from pylon_services.ingest.domain.pipeline import Summary

    kept = DedupeSet()
    summaries: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    out, rejects = io.BufferedWriter(out_raw, _BUFFER), io.BufferedWriter(rej_raw, _BUFFER)
    line_offset = 0
    for p in parts:
        seen.append(p)
        if p.get("multiline"):
            out_raw.abort()
            rej_raw.abort()
            return None, kept, seen
        summary = Summary.from_dict(copy.deepcopy(p["summary"]))  # corrected below, the input stays
        ordered = store.get(p["dedupe_key"]) if p.get("dedupe_key") else b""
        chunk_set = DedupeSet.from_bytes(ordered)
        _append_clean(store, p["out"], chunk_set.overlap(kept).positions(ordered), out, summary)
        kept.update(chunk_set)
        del chunk_set, ordered
        _append_rejects(store, p["rejects"], line_offset, rejects)
        line_offset += int(p.get("lines", 0))
        summaries.append(summary.to_dict())
    out.flush()
    rejects.flush()
    out_raw.close()
    rej_raw.close()
    return summaries, kept, seen


def _append_clean(store: ObjectStore, src: dict[str, Any], drop: set[int], out: io.BufferedWriter[ObjectWriter],
                  summary: Any) -> None:
    """Copy one chunk's cleaned output; split it into lines only when some records must go
    (``drop``: their positions), and parse only those."""
    from pylon_services.ingest.domain.pipeline import drop_lines

    if not src["size"]:
        return
    if drop:
        reader = io.BufferedReader(ObjectReader(store, src["key"], src["size"]), _BUFFER)
        drop_lines(reader, out, drop, summary)  # type: ignore[arg-type]
        return
    for block in store.iter_chunks(src["key"], chunk_size=READ_CHUNK):
        out.write(block)


def _append_rejects(store: ObjectStore, src: dict[str, Any], offset: int, out: io.BufferedWriter[ObjectWriter]) -> None:
    """Copy one chunk's rejects with their line numbers made absolute (``offset``: the physical
    lines of the chunks before it; 0 for Parquet, whose chunks number rows absolutely)."""
    if not src["size"]:
        return
    if not offset:
        for block in store.iter_chunks(src["key"], chunk_size=READ_CHUNK):
            out.write(block)
        return
    for line in io.BufferedReader(ObjectReader(store, src["key"], src["size"]), _BUFFER):
        rec = orjson.loads(line)
        rec["line"] += offset
        out.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))


def delete_chunk_outputs(store: ObjectStore, parts: list[dict[str, Any]]) -> None:
    """Remove the per-chunk objects once merged (or abandoned for a one-chunk rerun)."""
    for p in parts:
        for key in (p["out"]["key"], p["rejects"]["key"], p.get("dedupe_key")):
            if key:
                store.delete(key)
