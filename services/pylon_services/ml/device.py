"""Which torch device a setting names (shared by the trainers and the engines)."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the current CUDA device where there is one, else the CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)
