"""Trace readers: Gavel's trace formats, Poisson arrivals of Gavel job types, Alibaba GPU v2023.

Every reader yields ``TraceJob`` rows; a malformed line raises ``TraceError`` naming the file and
line, so a bad trace fails loudly instead of silently dropping jobs.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from pylon_services.scheduler.domain.scheduling import Node
from pylon_services.scheduler.domain.throughput import ThroughputTable, gavel_job_type

GAVEL_REFERENCE_TYPE = "v100"
# Gavel's isolated throughputs, shipped as package data (see data/ATTRIBUTION.md) so the
# simulator runs from any install without a path to the paper's artifact.
DEFAULT_THROUGHPUTS = "gavel_throughputs.json"


class TraceError(ValueError):
    """A trace line that cannot be read; the message says which file and line."""


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace. ``total_steps`` is its work; per-worker speed comes from the table."""

    id: str
    arrival: float
    job_type: str
    total_steps: float
    workers: int = 1
    gpus_per_worker: float = 1.0
    gpu_types: tuple[str, ...] = ()
    tenant: str = "default"
    priority: int = 0


def load_gavel_throughputs(path: str | Path | None = None) -> ThroughputTable:
    """Gavel's ``simulation_throughputs.json`` as a ThroughputTable; without a path, the copy that
    ships with this package (k80/p100/v100 isolated throughputs, 26 job types x scale factors)."""
    if path is None:
        text = resources.files("pylon_services.scheduler.sim").joinpath("data").joinpath(DEFAULT_THROUGHPUTS).read_text()
    else:
        text = Path(path).read_text()
    return ThroughputTable.from_gavel(json.loads(text))


def read_gavel_trace(path: str | Path) -> list[TraceJob]:
    """Read a Gavel trace: 10 columns (physical_cluster) or 7 (msr-seed0), tab separated."""
    jobs: list[TraceJob] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            jobs.append(_gavel_line(line.rstrip("\n").split("\t"), f"{path}:{lineno}", len(jobs)))
    return jobs


def _gavel_line(cols: list[str], where: str, index: int) -> TraceJob:
    try:
        if len(cols) == 10:
            name, steps, scale, weight, arrival = cols[0], cols[5], cols[6], cols[7], cols[9]
            priority = int(float(weight))
        elif len(cols) == 7:
            name, steps, arrival, scale = cols[0], cols[4], cols[5], cols[6]
            priority = 0
        else:
            raise TraceError(f"{where}: expected 10 (physical_cluster) or 7 (msr) tab-separated columns, "
                             f"got {len(cols)}")
        total, at, workers = float(steps), float(arrival), int(scale)
    except ValueError as e:
        if isinstance(e, TraceError):
            raise
        raise TraceError(f"{where}: {e}") from None
    if total <= 0 or at < 0 or workers < 1 or not name:
        raise TraceError(f"{where}: total_steps must be > 0, arrival >= 0, scale_factor >= 1 and job_type set")
    return TraceJob(f"j{index}", at, gavel_job_type(name, workers), total, workers, 1.0, (), "default", priority)


def poisson_jobs(table: ThroughputTable, *, jobs_per_hour: float, count: int, seed: int = 0,
                 multi_gpu_fraction: float = 0.0) -> list[TraceJob]:
    """Poisson arrivals of Gavel's job types, durations drawn as in Gavel's simulator
    (10^U(1.5,3) minutes for 80% of jobs, 10^U(3,4) for the rest, on a V100) and turned into
    steps with the table, so a job's run time on each type follows from its throughputs."""
    rng = random.Random(seed)
    names = sorted(j for j in table.job_types() if " x" not in j)
    t, out = 0.0, []
    for i in range(count):
        t += rng.expovariate(jobs_per_hour / 3600.0)
        name = rng.choice(names)
        workers = rng.choice([2, 4, 8]) if rng.random() < multi_gpu_fraction else 1
        job_type = gavel_job_type(name, workers)
        if table.rate(job_type, GAVEL_REFERENCE_TYPE) is None:
            job_type, workers = name, 1
        minutes = 10 ** (rng.uniform(1.5, 3) if rng.random() < 0.8 else rng.uniform(3, 4))
        rate = table.rate(job_type, GAVEL_REFERENCE_TYPE) or 1.0
        out.append(TraceJob(f"p{i}", t, job_type, minutes * 60 * rate * workers, workers))
    return out


def read_alibaba_pods(path: str | Path, *, limit: int | None = None) -> list[TraceJob]:
    """Alibaba GPU v2023 pods that ask for GPUs: work = run time in seconds (the table's default
    rate of 1 step/s), GPU-type constraints from ``gpu_spec``, tenant = QoS class."""
    out: list[TraceJob] = []
    for lineno, row in _csv_rows(path):
        try:
            num_gpu, milli = int(row["num_gpu"]), int(row["gpu_milli"])
            created = float(row["creation_time"])
            start = float(row.get("scheduled_time") or created)
            duration = float(row["deletion_time"]) - start
        except (KeyError, ValueError, TypeError) as e:
            raise TraceError(f"{path}:{lineno}: bad pod row ({e})") from None
        if num_gpu <= 0 or duration <= 0:
            continue  # CPU-only pods and pods that never ran are outside a GPU scheduler's scope
        gpus = float(num_gpu) if num_gpu > 1 else milli / 1000.0 or 1.0
        spec = tuple(dict.fromkeys(t for t in (row.get("gpu_spec") or "").split("|") if t))
        out.append(TraceJob(row["name"], created, "pod", duration, 1, gpus, spec, row.get("qos") or "default"))
        if limit and len(out) >= limit:
            break
    return out


def loaded(jobs: list[TraceJob], *, compress: float, max_work: float = 0.0) -> list[TraceJob]:
    """A contended variant of a trace: inter-arrival times divided by ``compress`` (durations
    kept) and, with ``max_work`` > 0, only the jobs whose work is at most that. Why: the Alibaba
    v2023 pods arrive about one an hour and a few of them run for months, so on any cluster they
    fit, the trace never queues and those few pods alone decide average JCT and makespan."""
    if compress <= 0:
        raise ValueError("compress must be positive")
    start = min((j.arrival for j in jobs), default=0.0)
    return [replace(j, arrival=start + (j.arrival - start) / compress) for j in jobs
            if not max_work or j.total_steps <= max_work]


def read_alibaba_nodes(path: str | Path) -> list[Node]:
    """Alibaba GPU nodes: one Node per row with its GPU model, GPU count and CPUs."""
    nodes = []
    for lineno, row in _csv_rows(path):
        try:
            gpus, cpus = float(row["gpu"]), float(row["cpu_milli"]) / 1000
            model = row["model"]
        except (KeyError, ValueError, TypeError) as e:
            raise TraceError(f"{path}:{lineno}: bad node row ({e})") from None
        if gpus > 0 and model:
            nodes.append(Node(row["sn"], model, gpus, gpus, cpus, cpus_total=cpus))
    return nodes


def _csv_rows(path: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), 2):
            if None in row or any(v is None for v in row.values()):
                raise TraceError(f"{path}:{lineno}: wrong number of columns")
            yield lineno, row
