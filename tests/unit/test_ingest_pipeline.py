"""The ingest data plane (pure): formats, validation, cleaning, profile, dedupe, reject rate."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pylon_services.common.errors import InvalidArgument
from pylon_services.ingest.domain.clean import normalize_whitespace, scrub_phones
from pylon_services.ingest.domain.pipeline import (
    DedupeSet,
    Recipe,
    Summary,
    check_reject_rate,
    cross_file_duplicates,
    detect_format,
    drop_duplicates,
    infer_schema,
    merge_summaries,
    preview,
    process_stream,
)
from pylon_services.ingest.domain.profile import HIST_BUCKETS


def run(data: bytes, fmt: str = "jsonl", compression: str = "", schema: dict | None = None,
        recipe: Recipe | None = None, seen: DedupeSet | None = None,
        sample: int = 1000) -> tuple[list[dict], list[dict], Summary]:
    out, rejects = io.BytesIO(), io.BytesIO()
    summary = process_stream(io.BytesIO(data), out, rejects, fmt=fmt, compression=compression, schema=schema,
                             recipe=recipe or Recipe(), seen=seen, sample=sample)
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    bad = [json.loads(x) for x in rejects.getvalue().splitlines()]
    assert summary.bytes_out == len(out.getvalue())
    assert summary.records_in == summary.records_out + summary.rejected + sum(summary.dropped.values())
    return records, bad, summary


def jsonl(*records: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.mark.parametrize(("name", "expected"), [
    ("a.jsonl", ("jsonl", "")), ("dir/A.JSONL.GZ", ("jsonl", "gzip")), ("x.ndjson.zst", ("jsonl", "zstd")),
    ("t.csv", ("csv", "")), ("p.parquet", ("parquet", "")), ("notes.txt.gz", ("text", "gzip")),
    ("README", ("text", "")), ("weird.bin", ("text", "")),
])
def test_detect_format(name, expected):
    assert detect_format(name) == expected


def test_malformed_records_are_quarantined_with_line_numbers_and_good_ones_kept():
    data = (b'{"text": "first", "n": 1}\n'
            b'{"text": "broken\n'                      # line 2: malformed JSON
            b'\n'                                     # line 3: blank, skipped
            b'[1, 2]\n'                               # line 4: not an object
            b'{"text": "bad \xff utf8", "n": 2}\n'    # line 5: bad UTF-8
            b'{"text": "second", "n": "three"}\n'     # line 6: wrong type
            b'{"n": 4}\n'                             # line 7: missing required field
            b'{"text": "third", "n": 5}\n')
    schema = {"fields": {"text": {"type": "string", "required": True}, "n": "integer"}}
    records, bad, summary = run(data, schema=schema)
    assert [r["text"] for r in records] == ["first", "third"]
    assert [(b["line"], b["reason"].split(":")[0]) for b in bad] == [
        (2, "malformed_json"), (4, "not_object"), (5, "bad_utf8"), (6, "wrong_type"), (7, "missing_field")]
    assert "'n'" in bad[3]["reason"] and "integer" in bad[3]["reason"]
    assert bad[0]["raw"] == '{"text": "broken'
    assert (summary.records_in, summary.records_out, summary.rejected) == (7, 2, 5)
    assert summary.profile["rejected_by_reason"]["bad_utf8"] == 1


def test_json_schema_shape_and_bad_schema():
    schema = {"type": "object", "properties": {"text": {"type": "string"}, "score": {"type": ["number", "null"]}},
              "required": ["text", "score"]}
    records, bad, _ = run(jsonl({"text": "a", "score": 1.5}, {"text": "b", "score": True}, {"text": "c"}), schema=schema)
    assert [r["text"] for r in records] == ["a"]
    assert [b["reason"].split(":")[0] for b in bad] == ["wrong_type", "missing_field"]
    with pytest.raises(InvalidArgument):
        run(jsonl({"text": "a"}), schema={"fields": {"text": "str"}})


def test_inferred_schema_rejects_records_that_break_it():
    data = jsonl({"text": "a", "n": 1}, {"text": "b", "n": 2.5}, {"text": "c", "n": "x"}, {"text": 4})
    schema = infer_schema(io.BytesIO(data), "jsonl", "", sample=2)
    assert schema["fields"]["n"] == {"type": ["number"], "required": True}
    assert schema["fields"]["text"] == {"type": ["string"], "required": True}
    records, bad, summary = run(data, schema=None, sample=2)
    assert [r["text"] for r in records] == ["a", "b"]
    assert [(b["line"], b["reason"].split(":")[0]) for b in bad] == [(3, "wrong_type"), (4, "wrong_type")]
    assert summary.schema == schema
    records, bad, summary = run(data, schema=None)  # a larger sample sees the strings too
    assert [r["text"] for r in records] == ["a", "b", "c"] and summary.schema["fields"]["n"]["type"] == ["number", "string"]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_gzip_and_zstd(compression):
    data = jsonl(*({"text": f"record {i}"} for i in range(500)))
    packed = gzip.compress(data) if compression == "gzip" else zstandard.ZstdCompressor().compress(data)
    records, bad, summary = run(packed, compression=compression)
    assert len(records) == 500 and not bad
    assert summary.bytes_in == len(packed) and records[-1]["text"] == "record 499"


def test_truncated_compressed_input_is_an_error_not_silent_data_loss():
    packed = gzip.compress(jsonl(*({"text": f"record {i}"} for i in range(5000))))
    with pytest.raises(InvalidArgument, match="cannot read"):
        run(packed[: len(packed) // 2], compression="gzip")


def test_parquet_rows_streamed_by_batch(tmp_path):
    import datetime

    table = pa.table({"body": [f"doc {i}" if i != 7 else None for i in range(3000)],
                      "lang": ["en" if i % 3 else None for i in range(3000)],
                      "at": [datetime.datetime(2026, 1, 1, 0, 0, i % 60) for i in range(3000)]})
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, row_group_size=1000)
    recipe = Recipe(text_field="body")
    with open(path, "rb") as f:
        out, rej = io.BytesIO(), io.BytesIO()
        summary = process_stream(f, out, rej, fmt="parquet", compression="", schema=None, recipe=recipe)
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    bad = [json.loads(x) for x in rej.getvalue().splitlines()]
    assert len(records) == 2999 and records[0] == {"text": "doc 0", "lang": None, "at": "2026-01-01T00:00:00"}
    assert summary.schema["fields"]["at"]["type"] == ["string"]
    assert [b["line"] for b in bad] == [8] and bad[0]["reason"].startswith("missing")
    assert summary.profile["columns"]["lang"]["nulls"] == 1000
    assert summary.bytes_in == path.stat().st_size
    # compressed parquet (not seekable after decompression) is spooled to disk, not memory
    packed = zstandard.ZstdCompressor().compress(path.read_bytes())
    records2, _, _ = run(packed, fmt="parquet", compression="zstd", recipe=recipe)
    assert records2 == records


def test_csv_wrong_column_count_and_type_coercion():
    data = (b"id,text,score\n"
            b"1,hello,0.5\n"
            b"2,too,many,cells\n"
            b'3,"quoted, with comma",1\n'
            b"4,short\n"
            b"x,bad id,2\n"
            b"6,\xff\xfe,3\n"
            b'7,"two\nlines",1\n'
            b"8,,1\n")
    schema = {"fields": {"id": "integer", "text": {"type": "string", "required": True}, "score": "number"}}
    records, bad, _ = run(data, fmt="csv", schema=schema)
    assert records == [{"text": "hello", "id": 1, "score": 0.5}, {"text": "quoted, with comma", "id": 3, "score": 1.0},
                       {"text": "two\nlines", "id": 7, "score": 1.0}]
    assert [(b["line"], b["reason"].split(":")[0]) for b in bad] == [
        (3, "csv_columns"), (5, "csv_columns"), (6, "wrong_type"), (7, "bad_utf8"), (10, "missing_field")]
    assert "expected 3 columns, got 4" in bad[0]["reason"]


def test_plain_text_lines_and_paragraphs():
    data = b"first line\n\nsecond   line\nstill second paragraph\n\n\n\nthird\n"
    records, _, _ = run(data, fmt="text")
    assert [r["text"] for r in records] == ["first line", "second line", "still second paragraph", "third"]
    records, _, _ = run(data, fmt="text", recipe=Recipe(paragraphs=True))
    assert [r["text"] for r in records] == ["first line", "second line\nstill second paragraph", "third"]


def test_unicode_and_whitespace_normalisation():
    decomposed = "Cafe\u0301  au\tlait\u00a0 \n\n\n\n  next "
    records, _, summary = run(jsonl({"text": decomposed}))
    assert records[0]["text"] == "Caf\u00e9 au lait\n\nnext"
    assert summary.profile["changes"]["unicode_normalized"] == 1
    assert summary.profile["changes"]["whitespace_normalized"] == 1
    records, _, _ = run(jsonl({"text": decomposed}), recipe=Recipe(normalize_unicode="", normalize_whitespace=False))
    assert records[0]["text"] == decomposed
    assert run(jsonl({"text": "\ufb01"}), recipe=Recipe(normalize_unicode="NFKC"))[0][0]["text"] == "fi"
    assert normalize_whitespace(" a \n b ") == "a\nb"


def test_email_and_phone_scrubbing():
    text = ("Mail jane.doe+x@example.co.uk or call +1 (555) 123-4567, 020 7946 0958 or 555.123.4567. "
            "Not phones: 2024-01-15, 192.168.100.200, order 12345678, v1.2.3")
    records, _, summary = run(jsonl({"text": text}), recipe=Recipe(scrub_email=True, scrub_phone=True))
    out = records[0]["text"]
    assert "example" not in out and out.count("[EMAIL]") == 1
    assert out.count("[PHONE]") == 3 and "123-4567" not in out and "0958" not in out
    assert "2024-01-15" in out and "192.168.100.200" in out and "12345678" in out
    assert summary.profile["changes"] == {"unicode_normalized": 0, "whitespace_normalized": 0,
                                          "emails_scrubbed": 1, "phones_scrubbed": 3}
    assert scrub_phones("tel 12 34")[1] == 0  # too few digits
    plain, _, _ = run(jsonl({"text": text}))
    assert plain[0]["text"] == text  # scrubbing is off by default


def test_length_filters_and_dedupe_counts():
    data = jsonl({"text": "ok"}, {"text": "   "}, {"text": "x" * 50}, {"text": "ok"}, {"text": "ok "})
    records, _, summary = run(data, recipe=Recipe(min_chars=2, max_chars=10))
    assert [r["text"] for r in records] == ["ok"]
    assert summary.dropped == {"too_short": 1, "too_long": 1, "duplicate": 2}
    records, _, summary = run(data, recipe=Recipe(dedupe=False, min_chars=0, max_chars=10))
    assert [r["text"] for r in records] == ["ok", "", "ok", "ok"] and summary.dropped == {"too_long": 1}


def test_dedupe_across_two_files_with_a_shared_set():
    seen = DedupeSet()
    a, _, _ = run(jsonl({"text": "shared"}, {"text": "only a"}), seen=seen)
    b, _, sb = run(jsonl({"text": "only b"}, {"text": "shared"}), seen=seen)
    assert [r["text"] for r in a] == ["shared", "only a"] and [r["text"] for r in b] == ["only b"]
    assert sb.dropped == {"duplicate": 1} and len(seen) == 3
    copy = DedupeSet.from_bytes(seen.to_bytes())
    assert len(copy) == 3 and "shared" in copy and "other" not in copy


def test_parallel_dedupe_then_cross_file_pass():
    """Files deduped in parallel (own sets) give the same result as one shared set after the
    second pass over only the files that need it."""
    files = [jsonl({"text": "a"}, {"text": "b"}, {"text": "a"}), jsonl({"text": "c"}, {"text": "b"}),
             jsonl({"text": "a"}, {"text": "d"})]
    sets = [DedupeSet() for _ in files]
    outs = [io.BytesIO() for _ in files]
    summaries = [process_stream(io.BytesIO(data), out, io.BytesIO(), fmt="jsonl", compression="", schema=None,
                                recipe=Recipe(), seen=seen) for data, seen, out in zip(files, sets, outs, strict=True)]
    drops = cross_file_duplicates(sets)
    assert [len(d) for d in drops] == [0, 1, 1]
    final, removed = [], 0
    for out, drop, summary in zip(outs, drops, summaries, strict=True):
        fixed = io.BytesIO()
        removed += drop_duplicates(io.BytesIO(out.getvalue()), fixed, drop, summary)
        final += [json.loads(x)["text"] for x in fixed.getvalue().splitlines()]
        assert summary.bytes_out == len(fixed.getvalue())
    shared = DedupeSet()
    one_pass = [run(data, seen=shared) for data in files]
    assert final == [r["text"] for records, _, _ in one_pass for r in records] == ["a", "b", "c", "d"]
    assert removed == 2
    merged, expected = merge_summaries(summaries), merge_summaries([s for _, _, s in one_pass])
    assert merged.dropped == expected.dropped == {"duplicate": 3} and merged.records_out == expected.records_out
    for key in ("records", "chars", "length_histogram", "columns", "tokens"):
        assert merged.profile[key] == expected.profile[key], key


def test_profile_histogram_nulls_and_merge():
    r1, _, s1 = run(jsonl({"text": "a" * 3, "tag": None}, {"text": "b" * 100, "tag": "x"}))
    r2, _, s2 = run(jsonl({"text": "c" * 3}, {"text": ""}), recipe=Recipe(min_chars=0))
    assert s1.profile["length_histogram"]["counts"][2] == 1  # 3 chars: 2 <= n < 4
    assert s1.profile["length_histogram"]["counts"][7] == 1  # 100 chars: 64 <= n < 128
    assert s1.profile["columns"]["tag"] == {"non_null": 1, "nulls": 1}
    assert s1.profile["tokens"] == 103 // 4 and s1.profile["tokens_estimated"]
    merged = merge_summaries([s1, s2])
    assert merged.records_out == 4 and merged.profile["records"] == 4
    assert len(merged.profile["length_histogram"]["counts"]) == HIST_BUCKETS
    assert merged.profile["length_histogram"]["counts"][0] == 1 and merged.profile["length_histogram"]["counts"][2] == 2
    assert merged.profile["columns"]["tag"] == {"non_null": 1, "nulls": 3}
    assert merged.profile["min_chars"] == 0 and merged.profile["max_chars"] == 100
    assert merged.schema["fields"]["tag"]["required"] is False


def test_recipe_round_trip_and_bad_recipes():
    recipe = Recipe(text_field="body", scrub_email=True, min_chars=5)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    for bad in ({"normalize_unicode": "NFX"}, {"min_chars": 10, "max_chars": 5}, {"text_field": ""}):
        with pytest.raises(InvalidArgument):
            Recipe(**bad)
    with pytest.raises(InvalidArgument, match="format"):
        run(jsonl({"text": "a"}), fmt="xml")
    with pytest.raises(InvalidArgument, match="compression"):
        run(jsonl({"text": "a"}), compression="lz4")


def test_reject_rate_check():
    _, _, summary = run(jsonl({"text": "a"}, {"text": "b"}, {"text": "c"}) + b"oops\n")
    assert check_reject_rate(summary, 0.5) is None
    message = check_reject_rate(summary, 0.2)
    assert message is not None and "1 of 4 records rejected (25.00%)" in message and "malformed_json" in message
    assert check_reject_rate(Summary(), 0.0) is None


def test_overlong_line_is_rejected_without_reading_it_whole():
    data = jsonl({"text": "keep"}) + b'{"text": "' + b"x" * 300_000 + b'"}\n' + jsonl({"text": "after"})
    records, bad, _ = run(data, recipe=Recipe(max_chars=1000))
    assert [r["text"] for r in records] == ["keep", "after"]
    assert bad[0]["line"] == 2 and bad[0]["reason"].startswith("too_long")


def test_progress_and_preview():
    data = jsonl(*({"text": f"doc {i}", "i": i} for i in range(1000)))
    seen_progress: list[int] = []
    process_stream(io.BytesIO(data), io.BytesIO(), io.BytesIO(), fmt="jsonl", compression="", schema=None,
                   recipe=Recipe(), progress=seen_progress.append)
    assert seen_progress[-1] == len(data)
    shown = preview(io.BytesIO(data + b"bad\n"), fmt="jsonl", compression="", n=5)
    assert [r["i"] for r in shown["records"]] == [0, 1, 2, 3, 4] and shown["profile"]["records"] == 5
    assert shown["summary"]["records_in"] == 5


def test_whitespace_normalisation_matches_a_simple_reference():
    """The fast replace-based version equals split/join per line + at most one blank line."""
    import random
    import re

    def reference(text: str) -> str:
        out = "\n".join(" ".join(line.split()) for line in text.split("\n")).strip()
        return re.sub(r"\n{3,}", "\n\n", out)

    alphabet = ["a", "b", " ", "  ", "\t", "\n", "\r", "\xa0", "\u3000", "é", "\n\n\n", "\x0b", "\u2028", "😀", "\x1f"]
    rng = random.Random(0)
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 15)))
        assert normalize_whitespace(text) == reference(text), repr(text)


def test_csv_schema_inference_types_cells():
    data = b"id,text,score,flag\n1,a,0.5,true\n2,b,,false\n3,c,2,true\n"
    schema = infer_schema(io.BytesIO(data), "csv", "")
    assert schema["fields"]["id"] == {"type": ["integer"], "required": True}
    assert schema["fields"]["score"] == {"type": ["null", "number"], "required": False}
    assert schema["fields"]["flag"]["type"] == ["boolean"]
    records, bad, _ = run(data, fmt="csv")
    assert not bad and records[1] == {"text": "b", "id": 2, "score": None, "flag": False}


def test_gzip_text_and_zstd_multi_frame():
    records, _, summary = run(gzip.compress(b"one\ntwo\n"), fmt="text", compression="gzip")
    assert [r["text"] for r in records] == ["one", "two"] and summary.bytes_in > 0
    frames = zstandard.ZstdCompressor().compress(jsonl({"text": "a"})) + zstandard.ZstdCompressor().compress(jsonl({"text": "b"}))
    records, _, _ = run(frames, compression="zstd")
    assert [r["text"] for r in records] == ["a", "b"]


def test_edge_inputs_empty_and_bom():
    records, bad, summary = run(b"")
    assert records == [] and bad == [] and summary.records_in == 0 and summary.profile["records"] == 0
    records, bad, _ = run(b"\xef\xbb\xbf" + jsonl({"text": "bom"}))
    assert [r["text"] for r in records] == ["bom"] and not bad
    records, _, _ = run(b"\xef\xbb\xbfid,text\n1,x\n", fmt="csv")
    assert records == [{"text": "x", "id": 1}]
