"""Claim: ``pylon up`` (the whole platform on one machine) starts in < 30 s and, idle, uses < 2 GiB
of memory in total, counted as PSS (proportional set size: shared pages split between the
processes that map them, so the sum is the real total).

Starts ``pylon_services.up.Platform`` in a temporary home on free ports, times ``start()`` until
every service reports SERVING, waits idle, then walks every process tree it started (the four
services, Redis, the Ray head and all of Ray's children: gcs_server, raylet, workers, agents)
and prints RSS and PSS per process and in total. RSS double-counts shared pages (shared
libraries, Ray's plasma store), so the target is judged on PSS; RSS is shown for reference.
Not a test: it prints figures and never fails on them.

    .venv/bin/python benchmarks/footprint.py [--idle 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from pylon_services.up import Platform

MIB = 1024 * 1024
TARGET_TOTAL_MIB = 2048
TARGET_STARTUP_S = 30.0


@dataclass
class ProcMem:
    component: str  # which started process tree it belongs to (gateway, redis, ray, ...)
    name: str
    pid: int
    rss_mib: float
    pss_mib: float | None


def _label(proc: psutil.Process) -> str:
    """A short readable name: Ray workers and Python services show their role, not just 'python'."""
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if name.startswith("ray::") or not cmd:
        return name
    for i, arg in enumerate(cmd):
        if arg == "-m" and i + 1 < len(cmd):
            return f"{name} -m {cmd[i + 1]}"
        if arg.endswith((".py", "/ray")) and not arg.endswith("python"):
            return f"{name} {os.path.basename(arg)}" + (f" {cmd[i + 1]}" if i + 1 < len(cmd) else "")
    return name


def _mem(proc: psutil.Process) -> tuple[float, float | None]:
    rss = proc.memory_info().rss / MIB
    try:  # PSS comes from /proc/<pid>/smaps_rollup; may be unreadable without privileges
        pss: float | None = proc.memory_full_info().pss / MIB
    except (psutil.AccessDenied, AttributeError):
        pss = None
    return rss, pss


def process_trees(roots: dict[str, int]) -> dict[int, tuple[str, psutil.Process]]:
    """Every live process under each root pid (recursive children), plus any process in a root's
    session (each root is started in a new session) that was reparented away from its tree."""
    found: dict[int, tuple[str, psutil.Process]] = {}
    for component, pid in roots.items():
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in members:
            found.setdefault(p.pid, (component, p))
    sessions = {pid: component for component, pid in roots.items()}
    for p in psutil.process_iter():
        if p.pid in found:
            continue
        try:
            sid = os.getsid(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if sid in sessions:
            found[p.pid] = (sessions[sid], p)
    return found


def measure_memory(roots: dict[str, int]) -> list[ProcMem]:
    rows = []
    for pid, (component, proc) in process_trees(roots).items():
        try:
            rss, pss = _mem(proc)
        except psutil.NoSuchProcess:
            continue
        rows.append(ProcMem(component, _label(proc)[:60], pid, round(rss, 1), None if pss is None else round(pss, 1)))
    rows.sort(key=lambda r: (r.component, -r.rss_mib))
    return rows


def summarize(rows: list[ProcMem]) -> dict[str, Any]:
    by_component: dict[str, dict[str, float]] = {}
    for r in rows:
        c = by_component.setdefault(r.component, {"processes": 0, "rss_mib": 0.0, "pss_mib": 0.0})
        c["processes"] += 1
        c["rss_mib"] = round(c["rss_mib"] + r.rss_mib, 1)
        c["pss_mib"] = round(c["pss_mib"] + (r.pss_mib or 0.0), 1)
    pss_known = all(r.pss_mib is not None for r in rows)
    return {"processes": len(rows), "by_component": by_component,
            "total_rss_mib": round(sum(r.rss_mib for r in rows), 1),
            "total_pss_mib": round(sum(r.pss_mib or 0.0 for r in rows), 1) if pss_known else None,
            "target_basis": "pss" if pss_known else "rss"}


def print_report(rows: list[ProcMem], summary: dict[str, Any], startup: dict[str, float], load: dict[str, Any]) -> None:
    print(f"startup: {startup['measured_s']:.2f} s measured around Platform.start() "
          f"(Platform reports {startup['reported_s']:.2f} s); target < {TARGET_STARTUP_S:.0f} s")
    print(f"machine: {os.cpu_count()} CPUs; load average before start {load['before']}, "
          f"at measurement {load['at_measure']}")
    print()
    print(f"{'component':<10} {'pid':>7} {'RSS MiB':>8} {'PSS MiB':>8}  process")
    for r in rows:
        pss = f"{r.pss_mib:8.1f}" if r.pss_mib is not None else f"{'n/a':>8}"
        print(f"{r.component:<10} {r.pid:>7} {r.rss_mib:8.1f} {pss}  {r.name}")
    print()
    print(f"{'component':<10} {'procs':>7} {'RSS MiB':>8} {'PSS MiB':>8}")
    for name, c in summary["by_component"].items():
        print(f"{name:<10} {c['processes']:>7} {c['rss_mib']:8.1f} {c['pss_mib']:8.1f}")
    total_pss = summary["total_pss_mib"]
    print(f"{'TOTAL':<10} {summary['processes']:>7} {summary['total_rss_mib']:8.1f} "
          f"{total_pss if total_pss is not None else 'n/a':>8}")
    basis = summary["target_basis"].upper()
    total = total_pss if total_pss is not None else summary["total_rss_mib"]
    print(f"total ({basis}) {total:.1f} MiB = {total / 1024:.2f} GiB; target < {TARGET_TOTAL_MIB / 1024:.0f} GiB "
          f"({'met' if total < TARGET_TOTAL_MIB else 'NOT met'})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=float, default=10.0, help="seconds to wait idle after SERVING before measuring")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps: list[str] = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="pylon-footprint-") as home:
        platform = Platform(home=home, fixed_ports=False, on_step=steps.append)
        try:
            t0 = time.monotonic()
            state = platform.start()
            startup = {"measured_s": round(time.monotonic() - t0, 2), "reported_s": float(state["startup_s"])}
            time.sleep(args.idle)
            roots = {name: proc.pid for name, proc in platform._all_procs().items()}
            rows = measure_memory(roots)
            load_at = [round(x, 2) for x in os.getloadavg()]
        finally:
            platform.stop()
            if platform.ray is not None:  # Ray's session files live outside the home; don't leave them
                shutil.rmtree(platform.ray.temp_dir, ignore_errors=True)
    summary = summarize(rows)
    load = {"before": load_before, "at_measure": load_at}
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "idle_s": args.idle, "startup": startup, "load_average": load,
                          "summary": summary, "processes": [asdict(r) for r in rows], "steps": steps}, indent=2))
    else:
        print_report(rows, summary, startup, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
