"""The torch engine's CUDA path, checked on a real CUDA device.

Plain functions with asserts, importing only torch, transformers, tokenizers and our
``engines.torch_engine`` modules, so they run both under pytest (``test_cuda_paths.py``, skipped
where CUDA is absent, i.e. on CI) and as a script on a bare GPU machine that has no pytest, Redis
or Ray: ``python -m tests.gpu.cuda_checks`` prints one line per check and exits non-zero on any
failure. ``PYLON_CHECK_DEVICE=cpu`` dry-runs the checks' logic on a machine without a GPU.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from pylon_services.engines.contract import EngineRequest, SamplingOptions
from pylon_services.engines.torch_engine.engine import TorchEngine
from pylon_services.engines.torch_engine.model import load_model
from pylon_services.engines.torch_engine.settings import TorchEngineConfig
from tests.support.hf_models import build_model_dir

DEVICE = os.environ.get("PYLON_CHECK_DEVICE", "cuda")
PROMPTS = [[5, 9, 33, 7, 100, 20, 3, 8, 9, 10, 11, 12, 13, 14, 40, 41, 42][:n] for n in (3, 17, 7, 1, 9)]


def _engine(directory: Path, **settings: object) -> TorchEngine:
    cfg = TorchEngineConfig(**{"device": DEVICE, "block_size": 4, **settings})  # type: ignore[arg-type]
    return TorchEngine(load_model(directory, cfg), cfg)


def _run(engine: TorchEngine, requests: list[EngineRequest]) -> list[list[int]]:
    async def one(r: EngineRequest) -> list[int]:
        return [t async for o in engine.generate(r) for d in o.deltas for t in d.token_ids]

    async def main() -> list[list[int]]:
        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def check_engine_greedy_equals_transformers_on_cuda() -> None:
    """fp32 on the GPU: the engine's batched, paged greedy output is transformers' own."""
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        directory = build_model_dir(Path(tmp), "llama")
        got = _run(_engine(directory, dtype="float32"), [EngineRequest(f"r{i}", prompt_token_ids=tuple(p), sampling=(
            SamplingOptions(max_tokens=12, temperature=0.0, ignore_eos=True))) for i, p in enumerate(PROMPTS)])
        model = transformers.AutoModelForCausalLM.from_pretrained(directory).to(DEVICE).eval()
        for prompt, tokens in zip(PROMPTS, got, strict=True):
            ref = model.generate(torch.tensor([prompt], device=DEVICE), max_new_tokens=12, min_new_tokens=12,
                                 do_sample=False)[0, len(prompt):].tolist()
            assert tokens == ref, (prompt, tokens, ref)


def check_seeded_sampling_repeats_on_cuda_in_bf16() -> None:
    """The default GPU dtype: a seed gives the same sample alone and in a crowd."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = build_model_dir(Path(tmp), "llama")
        options = SamplingOptions(max_tokens=16, temperature=0.8, top_p=0.95, seed=11, ignore_eos=True)
        alone = _run(_engine(directory), [EngineRequest("s", prompt_token_ids=(5, 6, 7), sampling=options)])[0]
        crowd = [EngineRequest(f"o{i}", prompt_token_ids=tuple(p), sampling=SamplingOptions(max_tokens=16))
                 for i, p in enumerate(PROMPTS)]
        crowded = _run(_engine(directory), [*crowd, EngineRequest("s", prompt_token_ids=(5, 6, 7),
                                                                  sampling=options)])[-1]
        assert len(alone) == 16 and alone == crowded, (alone, crowded)


CHECKS: list[Callable[[], None]] = [
    check_engine_greedy_equals_transformers_on_cuda,
    check_seeded_sampling_repeats_on_cuda_in_bf16,
]


def main() -> int:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing checked")
        return 2
    if DEVICE == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16={torch.cuda.is_bf16_supported()}")
    failed = 0
    for check in CHECKS:
        start = time.perf_counter()
        try:
            check()
            print(f"PASS {check.__name__} ({time.perf_counter() - start:.1f}s)")
        except Exception:  # noqa: BLE001 - report every check, then fail the run
            failed += 1
            print(f"FAIL {check.__name__}\n{traceback.format_exc()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
