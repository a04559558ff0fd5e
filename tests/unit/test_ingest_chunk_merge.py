"""Chunk-level processing gives exactly what one pass over the whole file gives: the same cleaned
bytes, the same rejects with the same absolute line numbers, the same counts, profile and schema.

Runs the real task functions (``processing.process_file`` and the ``chunked`` plan / chunk /
hash / merge tasks) directly, without Ray, on the local-filesystem object store, for many chunk
sizes so that cuts land everywhere: inside records, on line breaks, in blank lines.
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pylon_services.ingest import chunked, processing
from pylon_services.ingest.domain.chunks import LineRange, Part, byte_ranges, row_group_chunks
from pylon_services.ingest.domain.pipeline import Recipe
from pylon_services.storage.local import LocalObjectStore


def _jsonl_bytes() -> bytes:
    lines = []
    for i in range(400):
        if i % 37 == 5:
            lines.append(b'{"text": broken')  # malformed: a reject with its line number
        elif i % 41 == 7:
            lines.append(b"")  # blank lines count as lines but are no records
        elif i % 23 == 3:
            lines.append(json.dumps({"text": "the same text again", "n": i}).encode())  # duplicates
        elif i % 29 == 11:
            lines.append(json.dumps({"text": 5, "n": i}).encode())  # wrong type
        else:
            lines.append(json.dumps({"text": f"record {i} " + "é" * (i % 13) + "x  y" * (i % 7), "n": i},
                                    ensure_ascii=i % 2 == 0).encode())
    return b"\n".join(lines)  # the last line has no line break


@pytest.fixture
def env(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    return store, {"url": f"file://{tmp_path / 'store'}"}


def _file(store, key: str, data: bytes, fmt: str) -> dict:
    store.put(key, data)
    return {"path": key, "src_key": key, "format": fmt, "compression": "", "digest": "", "size": len(data),
            "tenant": "acme", "staging": False}


def _one_pass(conn, f, processing_spec):
    return processing.process_file(conn, "", "op1", 0, f, processing_spec, "one/")


def _chunked(conn, f, processing_spec, chunk_bytes):
    plan = chunked.plan_file(conn, f, processing_spec, chunk_bytes)
    parts = [chunked.process_chunk(conn, "", "op2", 0, f, processing_spec, plan.get("schema"), "many/", p)
             for p in plan["parts"]]
    hashed = chunked.hash_file(conn, 0, f)
    return plan, parts, chunked.merge_chunks(conn, 0, f, iter(parts), lambda: hashed, "many/")


def _same(store, one, many):
    assert many["summary"] == one["summary"]
    assert many["digest"] == one["digest"] and many["size"] == one["size"]
    assert store.get(many["rejects"]["key"]) == store.get(one["rejects"]["key"])
    assert store.get(many["out"]["key"]) == store.get(one["out"]["key"])
    assert (many["out"]["digest"], many["rejects"]["digest"]) == (one["out"]["digest"], one["rejects"]["digest"])


@pytest.mark.parametrize("chunk_bytes", [300, 1000, 1777, 4096])
def test_jsonl_in_chunks_equals_one_pass(env, chunk_bytes):
    store, conn = env
    f = _file(store, "in/a.jsonl", _jsonl_bytes(), "jsonl")
    spec = {"recipe": Recipe().to_dict(), "schema": None}
    one = _one_pass(conn, f, spec)
    plan, parts, many = _chunked(conn, f, spec, chunk_bytes)
    assert len(plan["parts"]) >= 5
    assert sum(p["lines"] for p in parts) == 400
    assert one["summary"]["dropped"]["duplicate"] > 5 and one["summary"]["rejected"] > 10
    _same(store, one, many)
    rejects = [json.loads(line) for line in store.get(many["rejects"]["key"]).splitlines()]
    assert [r["line"] for r in rejects if r["reason"].startswith("malformed")] == [i + 1 for i in range(400)
                                                                                   if i % 37 == 5]
    assert not list(store.iter_all("many/00000.00"))  # chunk outputs removed after the merge


def test_a_duplicate_pair_split_across_chunks_keeps_the_first(env):
    store, conn = env
    data = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in ["alpha", "beta", "gamma", "alpha", "delta"])
    f = _file(store, "in/d.jsonl", data, "jsonl")
    spec = {"recipe": Recipe().to_dict(), "schema": None}
    _, parts, many = _chunked(conn, f, spec, 20)
    assert len(parts) >= 3 and all(p["summary"]["dropped"] == {} for p in parts)  # no chunk saw both
    texts = [json.loads(line)["text"] for line in store.get(many["out"]["key"]).splitlines()]
    assert texts == ["alpha", "beta", "gamma", "delta"]
    assert many["summary"]["dropped"] == {"duplicate": 1} and many["summary"]["records_out"] == 4
    assert many["summary"]["profile"]["records"] == 4


def _csv_bytes(quoted_newline: bool = False) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "text", "score"])
    for i in range(300):
        if i % 31 == 4:
            buf.write(f"{i},too,many,columns\n")
        elif i % 19 == 2:
            w.writerow([i, "repeated row text", "1.5"])
        else:
            w.writerow([i, f"row, number {i}" + (' with "quotes"' if i % 5 == 0 else ""), str(i / 3)])
    if quoted_newline:
        w.writerow([999, "a cell\nover two lines", "2"])
    return buf.getvalue().encode()


@pytest.mark.parametrize("chunk_bytes", [256, 1500])
def test_csv_chunks_get_the_header_and_equal_one_pass(env, chunk_bytes):
    store, conn = env
    f = _file(store, "in/c.csv", _csv_bytes(), "csv")
    spec = {"recipe": Recipe(text_field="text").to_dict(), "schema": None}
    one = _one_pass(conn, f, spec)
    plan, parts, many = _chunked(conn, f, spec, chunk_bytes)
    assert len(parts) > 2 and plan["parts"][1]["header"] == ["id", "text", "score"]
    assert not any(p["multiline"] for p in parts)
    assert one["summary"]["rejected"] == 10
    _same(store, one, many)


def test_csv_with_a_quoted_newline_is_flagged_for_a_one_chunk_rerun(env):
    store, conn = env
    f = _file(store, "in/q.csv", _csv_bytes(quoted_newline=True), "csv")
    spec = {"recipe": Recipe().to_dict(), "schema": None}
    _, parts, merged = _chunked(conn, f, spec, 700)
    assert any(p["multiline"] for p in parts)
    assert merged == {"index": 0, "unsplit": True}


def test_text_lines_and_parquet_row_groups_in_chunks_equal_one_pass(env):
    store, conn = env
    text = "".join(f"line {i} {'dup' if i % 9 == 0 else i}\n" + ("\n" if i % 4 == 0 else "") for i in range(500))
    f = _file(store, "in/t.txt", text.encode(), "text")
    spec = {"recipe": Recipe().to_dict(), "schema": None}
    _same(store, _one_pass(conn, f, spec), _chunked(conn, f, spec, 512)[2])

    table = pa.table({"text": [f"row {i % 150}" if i % 3 else None for i in range(600)], "n": list(range(600))})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=50)
    f = _file(store, "in/p.parquet", buf.getvalue(), "parquet")
    one = _one_pass(conn, f, spec)
    plan, parts, many = _chunked(conn, f, spec, 400)
    assert len(parts) > 3 and plan["parts"][1]["first_row"] > 0
    assert one["summary"]["rejected"] == 200  # the null texts, by row number
    _same(store, one, many)


def test_compressed_and_small_files_are_not_split(env):
    store, conn = env
    f = {**_file(store, "in/z.jsonl.gz", b"x" * 5000, "jsonl"), "compression": "gzip"}
    assert len(chunked.plan_file(conn, f, {"recipe": Recipe().to_dict()}, 100)["parts"]) == 1
    f = _file(store, "in/s.jsonl", b'{"text": "a"}\n', "jsonl")
    assert len(chunked.plan_file(conn, f, {"recipe": Recipe().to_dict()}, 100)["parts"]) == 1
    f = _file(store, "in/p.txt", b"para one\n\npara two\n" * 50, "text")
    assert len(chunked.plan_file(conn, f, {"recipe": Recipe(paragraphs=True).to_dict()}, 100)["parts"]) == 1


@pytest.mark.parametrize("size,step", [(1, 1), (10, 3), (100, 7), (1000, 1)])
def test_line_ranges_cover_every_line_exactly_once(size, step):
    rows = [b"x" * ((i * 7) % 11) for i in range(size - 1)] + [b"last"]  # empty lines inside
    data = b"\n".join(rows) + (b"\n" if size % 2 else b"")
    for chunk in (1, 2, 5, step * 13, len(data)):
        got, lines = [], 0
        for s, e in byte_ranges(len(data), chunk):
            part = Part(start=s, end=e)
            got.append(LineRange(io.BytesIO(data), part).read())
            lines += part.lines
        assert b"".join(got) == data
        assert lines == size


def test_row_group_chunks_pack_by_size_and_number_rows():
    assert row_group_chunks([10, 10, 10, 30, 5], [2, 2, 2, 3, 1], 20) == [([0, 1], 0), ([2], 4), ([3], 6), ([4], 9)]
    assert row_group_chunks([], [], 20) == [([], 0)]
