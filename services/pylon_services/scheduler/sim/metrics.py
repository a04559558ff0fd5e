"""Summary figures of a simulation, and the PNG plot of queue length and utilisation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pylon_services.scheduler.sim.engine import Outcome


@dataclass(frozen=True)
class Summary:
    jobs: int
    finished: int
    rejected: int  # no node of the cluster could ever hold them (check_satisfiable)
    avg_jct_s: float
    p99_jct_s: float
    makespan_s: float
    utilisation: float
    jain_fairness: float  # Jain's index over finish-time fairness rho = JCT / run time alone
    avg_rho: float
    preemptions: int
    passes: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarise(out: Outcome) -> Summary:
    """Average and p99 JCT, makespan, utilisation and Jain's fairness over finished jobs."""
    jcts = sorted(out.finish[j] - out.arrival[j] for j in out.finish)
    n = len(jcts)
    avg = sum(jcts) / n if n else math.nan
    p99 = jcts[min(n - 1, math.ceil(0.99 * n) - 1)] if n else math.nan
    start = min(out.arrival.values(), default=0.0)
    makespan = max(out.finish.values(), default=start) - start
    util = out.busy_gpu_seconds / (out.total_gpus * makespan) if makespan > 0 and out.total_gpus else 0.0
    rhos = [(out.finish[j] - out.arrival[j]) / out.ideal[j] for j in out.finish
            if 0 < out.ideal[j] < math.inf]
    jain = (sum(rhos) ** 2 / (len(rhos) * sum(r * r for r in rhos))) if rhos else math.nan
    avg_rho = sum(rhos) / len(rhos) if rhos else math.nan
    return Summary(len(out.arrival) + len(out.rejected), n, len(out.rejected), avg, p99, makespan, util, jain,
                   avg_rho, out.preemptions, out.passes)


def plot(out: Outcome, path: str, title: str = "", max_points: int = 4000) -> None:
    """Queue length and GPU utilisation over time as a small PNG (downsampled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, len(out.times) // max_points)
    hours = [t / 3600 for t in out.times[::step]]
    util = [u / out.total_gpus if out.total_gpus else 0.0 for u in out.used_gpus[::step]]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 4), sharex=True, dpi=80)
    ax1.step(hours, out.queue_len[::step], where="post", lw=0.8)
    ax1.set_ylabel("queued jobs")
    ax2.step(hours, util, where="post", lw=0.8, color="tab:green")
    ax2.set_ylabel("GPU utilisation")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("time (hours)")
    if title:
        ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
