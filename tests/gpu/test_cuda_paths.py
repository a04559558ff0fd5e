"""The causal-lm trainer's and the torch engine's CUDA paths (see ``cuda_checks``); skipped
without a GPU.

CI machines have no GPU, so these are skipped there; on a GPU machine run them with pytest or
``python -m tests.gpu.cuda_checks``.
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
