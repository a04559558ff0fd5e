"""Chunk-level parallelism inside one file: one large JSONL processed as one Ray task (baseline,
what ingest did before chunking) vs split into chunks (plan, chunk tasks + a hash task in
parallel, merge), measured in the same run on the same file and the same Ray cluster.

Claim: on N cores a single large file is processed up to ~N times faster than as one task (the
merge, which streams the cleaned output once to hash it, is the serial part). Both runs must
produce byte-identical cleaned output and rejects; the script checks that and prints the times,
the ratio and how long each stage took.

    python benchmarks/ingest_chunks.py                    # 512 MiB, 64 MiB chunks, 2 rounds
    python benchmarks/ingest_chunks.py --mib 64 --chunk-mib 8 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest_validate import MIB, SCHEMA, generate  # noqa: E402

from pylon_services.ingest import chunked, processing  # noqa: E402
from pylon_services.ingest.domain.pipeline import Recipe  # noqa: E402
from pylon_services.ingest.store.ray_runner import merge_when_ready  # noqa: E402
from pylon_services.storage.local import LocalObjectStore  # noqa: E402


def cpu_timed(fn: Any) -> Any:
    """``fn`` as a Ray task whose result dict also carries the CPU seconds the task used
    (``time.process_time``: not the time it waited), which drifting load distorts less than
    wall time."""
    def run(*args: Any) -> dict:
        t0 = time.process_time()
        out = fn(*args)
        out["cpu_s"] = time.process_time() - t0
        return out
    run.__name__ = fn.__name__
    return ray.remote(run)


def one_task(conn: dict, f: dict, spec: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    res = ray.get(cpu_timed(processing.process_file).remote(conn, "", "base", 0, f, spec, "one/"))
    return time.perf_counter() - start, res


def in_chunks(conn: dict, f: dict, spec: dict, chunk_bytes: int) -> tuple[float, dict, dict[str, float]]:
    """As the ingest runner does it: plan, then chunks, hash and a merge that takes each chunk
    as it finishes, all submitted at once."""
    stages: dict[str, float] = {}
    start = time.perf_counter()
    plan = ray.get(cpu_timed(chunked.plan_file).remote(conn, f, spec, chunk_bytes))
    stages["plan"] = time.perf_counter() - start
    chunk = cpu_timed(chunked.process_chunk)
    refs = [chunk.remote(conn, "", "ours", 0, f, spec, plan.get("schema"), "many/", p) for p in plan["parts"]]
    hashed = cpu_timed(chunked.hash_file).remote(conn, 0, f)
    merged = cpu_timed(merge_when_ready).options(num_cpus=0).remote(conn, 0, f, refs, [hashed], "many/")
    parts = ray.get(refs)
    stages["chunks"] = time.perf_counter() - start - stages["plan"]
    res = ray.get(merged)
    total = time.perf_counter() - start
    stages["merge"] = total - stages["plan"] - stages["chunks"]  # what the merge adds after the last chunk
    stages["parts"] = len(plan["parts"])
    stages["cpu_chunks"] = sum(p["cpu_s"] for p in parts)
    stages["cpu_other"] = plan["cpu_s"] + ray.get(hashed)["cpu_s"] + res["cpu_s"]
    return total, res, stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--dir", default=None, help="where the file and the local object store live")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pylon-chunks-") as tmp:
        path = os.path.join(tmp, "big.jsonl")
        n = generate(path, args.mib * MIB)
        size = os.path.getsize(path)
        store = LocalObjectStore(os.path.join(tmp, "store"))
        store.put_file("in/big.jsonl", path)
        os.unlink(path)
        conn = {"url": f"file://{tmp}/store"}
        f = {"path": "big.jsonl", "src_key": "in/big.jsonl", "format": "jsonl", "compression": "", "digest": "",
             "size": size, "tenant": "bench", "staging": False}
        spec = {"recipe": Recipe().to_dict(), "schema": SCHEMA}
        # A new local cluster would otherwise turn on token auth and write ~/.ray/auth_token,
        # which then switches every later Ray process on this machine to token auth.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        warm = {**f, "src_key": "in/warm.jsonl", "size": 2 * MIB}  # workers start and import once
        store.put("in/warm.jsonl", store.get("in/big.jsonl", start=0, end=2 * MIB).rsplit(b"\n", 1)[0] + b"\n")
        warm["size"] = store.head("in/warm.jsonl").size
        one_task(conn, warm, spec)
        in_chunks(conn, warm, spec, MIB // 2)
        print(f"file: {size / MIB:.0f} MiB, {n} records; Ray with {args.cpus} CPUs; chunks of {args.chunk_mib} MiB; "
              f"load average {os.getloadavg()[0]:.1f}")
        for r in range(args.rounds):
            first_base = r % 2 == 0  # alternate the order so drifting load hits both
            runs = [("base", None), ("ours", None)] if first_base else [("ours", None), ("base", None)]
            out: dict[str, tuple] = {}
            for name, _ in runs:
                out[name] = one_task(conn, f, spec) if name == "base" else in_chunks(conn, f, spec,
                                                                                       args.chunk_mib * MIB)
            tb, rb = out["base"][0], out["base"][1]
            to, ro, stages = out["ours"]
            same = (rb["out"]["digest"], rb["rejects"]["digest"], rb["summary"]) == \
                   (ro["out"]["digest"], ro["rejects"]["digest"], ro["summary"])
            cpu_all = stages["cpu_chunks"] + stages["cpu_other"]
            # With `cpus` free cores the chunks would take cpu_chunks / cpus, plus the merge tail.
            ideal = rb["cpu_s"] / (stages["cpu_chunks"] / args.cpus + stages["merge"])
            print(f"round {r + 1}: one task {tb:.1f} s ({size / MIB / tb:.1f} MiB/s) | "
                  f"{int(stages['parts'])} chunks {to:.1f} s ({size / MIB / to:.1f} MiB/s: plan {stages['plan']:.1f} s, "
                  f"all chunks done at {stages['chunks']:.1f} s, merge tail {stages['merge']:.1f} s) | "
                  f"speedup {tb / to:.2f}x | identical output: {same} | load {os.getloadavg()[0]:.1f}")
            print(f"    CPU seconds: one task {rb['cpu_s']:.1f} | chunks {stages['cpu_chunks']:.1f} + plan/hash/merge "
                  f"{stages['cpu_other']:.1f} = {cpu_all:.1f} ({cpu_all / rb['cpu_s']:.2f}x the work) | "
                  f"speedup on {args.cpus} free cores from CPU time: {ideal:.2f}x")
            for key in store.iter_all("one/"):
                store.delete(key.key)
            for key in store.iter_all("many/"):
                store.delete(key.key)
        ray.shutdown()


if __name__ == "__main__":
    main()
