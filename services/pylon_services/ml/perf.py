"""Throughput accounting shared by trainers and benchmarks: model FLOPs utilisation.

MFU is the model's training FLOPs per second (``LlamaSpec.flops_per_token`` x tokens/s) over the
accelerator's dense peak for the compute dtype. Peaks are the vendors' dense (not sparse) tensor
figures per device; a device not listed has no MFU unless ``PYLON_PEAK_FLOPS`` gives its peak.
"""

from __future__ import annotations

import os

# Dense bf16 tensor-core peak FLOP/s per device, by a substring of torch.cuda.get_device_name().
# H100/H200 SXM: 989 TFLOPs; H100 PCIe: 756; A100: 312; L40S: 362; L4: 121; A10G: 125 (70 on
# some SKUs, conservative choice here); V100 (fp16): 125.
_BF16_PEAKS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
    ("L4", 121e12), ("A10G", 125e12), ("V100", 125e12),
)
PEAK_ENV = "PYLON_PEAK_FLOPS"


def peak_flops(device_name: str) -> float | None:
    """The dense peak FLOP/s of ``device_name`` ("cpu" or a CUDA device name), or None."""
    raw = os.environ.get(PEAK_ENV, "").strip()
    if raw:
        try:
            return float(raw)
        except ValueError:
            return None
    for key, peak in _BF16_PEAKS:
        if key in device_name:
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown."""
    if not peak or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / peak
