"""The causal-lm trainer's CUDA paths and its Hugging Face output on CUDA (see ``cuda_checks``);
skipped without a GPU.

CI machines have no GPU, so these are skipped there; on a GPU machine run
``python -m tests.gpu.cuda_checks`` (what ran where is recorded in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.gpu.cuda_checks import CHECKS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_cuda_path(check: Callable[[], None]) -> None:
    check()
