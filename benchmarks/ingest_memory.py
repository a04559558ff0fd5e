"""Claim: uploading, validating, cleaning and tokenizing a large JSONL file never holds it in
memory: the peak resident memory of every process involved (the SDK, the ingest service, each Ray
worker) stays under 1 GiB.

Real stack (SeaweedFS, Redis, Ray head, ingest as its own process; see ``ingest_upload.py``). The
SDK runs in a child process that uploads the file (direct multipart), waits for processing, then
tokenizes the version (BPE trained on a sample, shards for the whole version) and reports its own
peak RSS. Peaks of the other processes are their kernel high-water marks (``VmHWM``), read after
the work is done (Ray workers are kept alive, so their peaks are still there).

Run: .venv/bin/python benchmarks/ingest_memory.py [--gib 1] (use --gib 4 for the 4 GiB claim)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest_upload import IngestStack, make_jsonl  # noqa: E402 - sibling benchmark module

GiB = 1 << 30


def sdk_child(address: str, token: str, path: str) -> None:
    """Upload + process + tokenize through the SDK; print timings and this process's peak RSS."""
    import pylon

    out: dict[str, object] = {}
    with pylon.Client(address, token) as c:
        t0 = time.perf_counter()
        v = c.datasets.upload(path, "big", max_reject_rate=0.01)
        out["upload_and_process_s"] = round(time.perf_counter() - t0, 1)
        out["records"] = v.record_count
        t1 = time.perf_counter()
        tok = c.datasets.tokenize("big", v.version, vocab_size=8192)
        out["tokenize_s"] = round(time.perf_counter() - t1, 1)
        out["tokens"] = tok.total_tokens
        out["shards"] = tok.shard_count
    out["sdk_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (Ray's raylet, workers, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:90]
    except OSError:
        return "?"


class PeakSampler(threading.Thread):
    """Polls the high-water mark of every process under the given roots twice a second, so the
    peak of a Ray worker that exits before the end (idle workers are reaped) is not lost."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.peaks, self.names = roots, {}, {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            for root in self.roots:
                for pid in [root, *descendants(root)]:
                    try:
                        mib = peak_rss_mib(pid)
                    except OSError:
                        continue
                    if mib > self.peaks.get(pid, 0):
                        self.peaks[pid] = mib
                        self.names[pid] = cmdline(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default="")
    ap.add_argument("--sdk-child", nargs=3, metavar=("ADDRESS", "TOKEN", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sdk_child:
        sdk_child(*args.sdk_child)
        return
    root = tempfile.mkdtemp(prefix="pylon-bench-mem-", dir=args.dir or None)
    stack = IngestStack(root)
    try:
        path = os.path.join(root, "big.jsonl")
        make_jsonl(path, int(args.gib * 1024), words=(60, 300))  # documents of ~0.4-2 KB
        print(f"file: {os.path.getsize(path) / GiB:.2f} GiB; load before: {os.getloadavg()}")
        stack.start()
        env = {**os.environ, "PYLON_CACHE_DIR": os.path.join(root, "cache")}
        sampler = PeakSampler([stack.ray.proc.pid, stack.ingest.pid])
        sampler.start()
        child = subprocess.run([sys.executable, __file__, "--sdk-child", stack.address, stack.token("mem"), path],
                               env=env, capture_output=True, text=True, check=False)
        sampler.stop_event.set()
        sampler.join()
        if child.returncode:
            print(child.stdout, child.stderr[-3000:])
            raise SystemExit("the SDK child failed")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print("sdk:", result)
        peaks = {"sdk (child process)": result["sdk_peak_rss_mib"],
                 "ingest service": round(sampler.peaks.get(stack.ingest.pid, peak_rss_mib(stack.ingest.pid)), 1)}
        for pid, mib in sampler.peaks.items():
            name = sampler.names[pid]
            if pid != stack.ingest.pid and ("ray" in name or "raylet" in name or "gcs_server" in name):
                peaks[f"ray {pid} {name[:50]}"] = round(mib, 1)
        for what, proc in (("seaweedfs", stack.seaweed.proc), ("redis", stack.redis.proc)):
            if proc is not None:
                peaks[f"(infra) {what}"] = round(peak_rss_mib(proc.pid), 1)
        for name, mib in sorted(peaks.items(), key=lambda kv: -kv[1]):
            print(f"  {mib:8.1f} MiB  {name}")
        involved = {k: v for k, v in peaks.items() if not k.startswith("(infra)")}
        worst = max(involved, key=lambda k: involved[k])
        print(f"PEAK RSS of any process involved: {involved[worst]:.1f} MiB ({worst}); "
              f"{'under' if involved[worst] < 1024 else 'OVER'} 1 GiB")
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
