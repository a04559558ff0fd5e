"""Validation + cleaning throughput and memory of the ingest data plane on generated JSONL.

Claim: ``process_stream`` (parse, validate against a schema, clean: NFC + whitespace + dedupe,
profile, write accepted JSONL and rejects) runs at a useful fraction of a bare ``json.loads``
loop over the same file on one core, and its peak RSS stays far under 1 GiB on a file of any
size (streaming; dedupe keeps 16-byte digests only).

Prints: MB/s of the baseline (``for line in f: json.loads(line)``) and of ours, measured in the
same run on the same file, their ratio, the cProfile top entries of ours, and the peak RSS of
``process_stream`` on a large file in a fresh process (``resource.getrusage``).

    python benchmarks/ingest_validate.py                       # 256 MiB throughput, 1 GiB memory
    python benchmarks/ingest_validate.py --memory-gib 4        # the 4 GiB memory run
    python benchmarks/ingest_validate.py --quick               # 32 MiB / 128 MiB smoke run
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time

from pylon_services.ingest.domain.pipeline import Recipe, Summary, process_stream

MIB = 1 << 20
SCHEMA = {"fields": {"text": {"type": "string", "required": True}, "id": {"type": "integer", "required": True},
                     "source": "string", "score": ["number", "null"]}}
WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be "
         "data model train token shard cluster queue replica gradient café naïve résumé über 日本 😀").split()


def generate(path: str, size: int, seed: int = 0) -> int:
    """A JSONL file of about ``size`` bytes: texts of 50-6000 chars mixing ASCII, accented
    Latin, CJK and emoji (half written with \\u escapes), a quarter with runs of whitespace to
    fix, ~1% malformed lines, ~2% duplicates, ~1% wrong types. Returns the record count."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choices(WORDS, k=rng.randint(8, 500))) for _ in range(4000)]
    written = n = 0
    with open(path, "wb", buffering=8 * MIB) as f:
        while written < size:
            lines = []
            for _ in range(1000):
                n += 1
                roll = rng.random()
                if roll < 0.01:
                    line = '{"text": "broken record' + str(n)
                elif roll < 0.02:
                    line = json.dumps({"text": pool[n % 4000], "id": str(n), "source": "web"})
                elif roll < 0.04:
                    line = json.dumps({"text": pool[n % 50], "id": n, "source": "dup"})
                else:
                    gap = "  \t" if rng.random() < 0.25 else " "  # a quarter need whitespace fixes
                    text = f"{rng.choice(pool)}{gap}{n} {rng.choice(pool)}"
                    line = json.dumps({"text": text, "id": n, "source": "web", "score": rng.random()},
                                      ensure_ascii=rng.random() < 0.5)
                lines.append(line)
            block = ("\n".join(lines) + "\n").encode()
            f.write(block)
            written += len(block)
    return n


def baseline(path: str) -> float:
    """Seconds for the plain json.loads loop (malformed lines caught and skipped)."""
    start = time.perf_counter()
    with open(path, "rb") as f:
        for line in f:
            try:
                json.loads(line)
            except ValueError:
                pass
    return time.perf_counter() - start


def ours(path: str) -> tuple[float, Summary]:
    start = time.perf_counter()
    with open(path, "rb") as src, open(os.devnull, "wb") as out, open(os.devnull, "wb") as rejects:
        summary = process_stream(src, out, rejects, fmt="jsonl", compression="", schema=SCHEMA, recipe=Recipe())
    return time.perf_counter() - start, summary


def profile_top(path: str, limit: int = 14) -> str:
    prof = cProfile.Profile()
    prof.enable()
    ours(path)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(limit)
    return "\n".join(line for line in buf.getvalue().splitlines() if line.strip())[-3000:]


def memory_child(path: str) -> None:
    """Run in a fresh process: process the file, print the summary counts and peak RSS."""
    seconds, summary = ours(path)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "records_in": summary.records_in, "records_out": summary.records_out,
                      "rejected": summary.rejected, "dropped": summary.dropped, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="size of the throughput file")
    parser.add_argument("--memory-gib", type=float, default=1.0, help="size of the memory-run file")
    parser.add_argument("--quick", action="store_true", help="32 MiB throughput, 128 MiB memory run")
    parser.add_argument("--dir", default=None, help="where to write the generated files")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    mib, mem_bytes = (32, 128 * MIB) if args.quick else (args.mib, int(args.memory_gib * 1024 * MIB))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.jsonl")
        records = generate(path, mib * MIB)
        size_mb = os.path.getsize(path) / 1e6
        print(f"file: {size_mb:.0f} MB, {records} records (1% malformed, 1% wrong type, ~2% duplicate, 25% whitespace runs)")
        base = min(baseline(path) for _ in range(2))
        mine, summary = min((ours(path) for _ in range(2)), key=lambda r: r[0])
        print(f"baseline json.loads loop : {size_mb / base:7.1f} MB/s ({base:.2f} s)")
        print(f"process_stream           : {size_mb / mine:7.1f} MB/s ({mine:.2f} s)  "
              f"in={summary.records_in} out={summary.records_out} rejected={summary.rejected} dropped={summary.dropped}")
        print(f"ratio ours / baseline    : {base / mine:.2f}")
        small = os.path.join(tmp, "profile.jsonl")
        generate(small, 16 * MIB, seed=1)
        print("cProfile of process_stream on 16 MiB (top by own time):")
        print(profile_top(small))
        os.unlink(small)
        os.unlink(path)
        big = os.path.join(tmp, "big.jsonl")
        generate(big, mem_bytes, seed=2)
        print(f"memory run: {os.path.getsize(big) / 2**30:.2f} GiB file, process_stream in a fresh process ...")
        child = subprocess.run([sys.executable, __file__, "--memory-child", big], capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"peak RSS {result['peak_rss_mib']:.0f} MiB; {result['records_in']} records in "
              f"{result['seconds']:.1f} s; out={result['records_out']} rejected={result['rejected']} dropped={result['dropped']}")


if __name__ == "__main__":
    main()
