"""CPU linear layers through oneDNN with their weights reordered once, at load.

transformers' ``nn.Linear`` runs ``aten::linear``, which on CPU calls MKL's sgemm on the weight as
stored. oneDNN's matmul on a weight reordered into its blocked layout for the expected batch is
faster for the skinny shapes of decode (a few dozen rows against a large weight):
``benchmarks/onednn_linear.py`` measures each shape, ``benchmarks/engine_throughput.py`` the
engine. vLLM's CPU backend does the same through its own oneDNN bindings; PyTorch's Inductor does
it when freezing a compiled model. This module uses PyTorch's own ``mkldnn`` ops, so it needs no
compiler and no extra package.

The results equal ``nn.Linear``'s up to float rounding (accumulation order differs). A tied weight
(an LM head sharing the embedding's) is reordered into a copy; an untied one is replaced.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("pylon.engine")

# The batch the weights are reordered for: a typical decode step's rows. Other batch sizes run
# correctly, the layout is only tuned for this one.
BATCH_HINT = 32
# Smaller weights stay on nn.Linear: oneDNN's fixed cost per call outweighs its gain there (a
# 64-wide test model took longer per step with every linear swapped).
MIN_WEIGHT_ELEMENTS = 1 << 18


class OneDNNLinear(torch.nn.Module):
    """``nn.Linear``'s forward through ``mkldnn._linear_pointwise`` on a reordered weight."""

    def __init__(self, linear: torch.nn.Linear, batch_hint: int = BATCH_HINT) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.register_buffer("packed", packed, persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def available() -> bool:
    """Whether this PyTorch build runs oneDNN's linear on this CPU (a tiny call, checked)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        lin = torch.nn.Linear(8, 4)
        with torch.inference_mode():
            got = OneDNNLinear(lin, 2)(torch.ones(2, 8))
            return bool(torch.allclose(got, lin(torch.ones(2, 8)), atol=1e-5))
    except (RuntimeError, AttributeError) as exc:
        log.info("oneDNN linear unavailable, using nn.Linear", extra={"error": str(exc)[:200]})
        return False


def use_onednn_linears(model: torch.nn.Module) -> int:
    """Swap every large fp32 ``nn.Linear`` of a CPU ``model`` for ``OneDNNLinear``; how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32
             and child.weight.device.type == "cpu" and child.weight.numel() >= MIN_WEIGHT_ELEMENTS]
    with torch.inference_mode():
        for parent, name, child in swaps:
            setattr(parent, name, OneDNNLinear(child))
    return len(swaps)
