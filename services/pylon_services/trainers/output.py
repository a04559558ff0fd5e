"""What every built-in trainer does around its loop: thread limits and the loss-curve image."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

THREADS_ENV = "PYLON_TORCH_THREADS"


def configure_threads() -> None:
    """Honour ``PYLON_TORCH_THREADS`` (a worker shares its host; torch would grab every core)."""
    import torch

    raw = os.environ.get(THREADS_ENV)
    if raw is None or raw.strip() == "":
        return
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be an integer >= 1, got {raw!r}")
    torch.set_num_threads(threads)


def loss_curve_png(history: Sequence[tuple[int, float]], val_history: Sequence[tuple[int, float]]) -> bytes:
    """The training loss (and held-out loss, when evaluated) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if history:
            ax.plot([s for s, _ in history], [v for _, v in history], label="train loss", linewidth=1)
        if val_history:
            ax.plot([s for s, _ in val_history], [v for _, v in val_history], "o-", label="held-out loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)
