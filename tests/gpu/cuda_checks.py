"""The GPU paths of the tiny-GPT trainer and the torch engine, checked on a real CUDA device.

Plain functions with asserts, importing only torch, safetensors and our ``ml``/``trainers``/
``engines.torch_engine`` modules, so they run both under pytest (``test_cuda_paths.py``, skipped
where CUDA is absent, i.e. on CI) and as a script on a bare GPU machine that has no pytest, Redis
or Ray: ``python -m tests.gpu.cuda_checks`` prints one line per check and exits non-zero on any
failure. What ran where is recorded in docs/benchmarks.md ("GPU paths").
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

import torch

from pylon_services.engines.torch_engine import ModelRunner
from pylon_services.ml.checkpoint import load_model, load_trainer_state
from pylon_services.trainers.tiny_gpt import TrainConfig, train

CORPUS = (
    "the quick brown fox jumps over the lazy dog.\n"
    "pack my box with five dozen liquor jugs!\n"
    "héllo wörld ✓ 日本\n"
) * 200
# Overridable only to dry-run the checks' logic on a CPU-only machine.
DEVICE = os.environ.get("PYLON_CHECK_DEVICE", "cuda")
SHAPE = {"batch_size": 16, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 128}


def _cfg(**over: object) -> TrainConfig:
    base: dict[str, object] = {"steps": 200, "warmup": 10, "eval_every": 100, "log_every": 20,
                               "device": DEVICE, **SHAPE}
    base.update(over)
    return TrainConfig(**base)  # type: ignore[arg-type]


def check_training_learns_on_cuda() -> None:
    """200 bf16-autocast steps with fused AdamW on the GPU bring the loss far below uniform."""
    metrics: list[dict[str, float]] = []
    result = train(CORPUS.encode(), _cfg(), on_metrics=metrics.append)
    uniform = float(torch.log(torch.tensor(256.0)))
    assert result.steps_done == 200, result.steps_done
    assert metrics[0]["loss"] > 3.0, metrics[0]
    assert result.final_loss < 0.5 * uniform, (result.final_loss, uniform)
    # Weights come back as CPU tensors a CPU-only host can load.
    model, _ = load_model(result.files, torch.device("cpu"))
    assert next(model.parameters()).device.type == "cpu"


def check_stop_and_resume_on_cuda() -> None:
    """A run stopped at step 60 (preemption) resumes on the GPU and ends at the same step count,
    with the optimizer state carried over."""
    seen = {"n": 0}

    def stop() -> bool:
        seen["n"] += 1
        return seen["n"] > 60

    first = train(CORPUS.encode(), _cfg(steps=120), should_stop=stop)
    assert first.stopped_early and first.steps_done == 60, (first.stopped_early, first.steps_done)
    assert int(load_trainer_state(first.files)["step"]) == 60
    second = train(CORPUS.encode(), _cfg(steps=120), resume_from=first.files)
    assert second.steps_done == 120 and not second.stopped_early
    assert second.final_loss < first.final_loss + 0.5, (first.final_loss, second.final_loss)


def check_cuda_and_cpu_inference_agree() -> None:
    """A GPU-trained checkpoint gives (nearly) the same next-token distribution on the GPU (bf16
    autocast) as on the CPU (fp32), and greedy decoding agrees on the first tokens."""
    result = train(CORPUS.encode(), _cfg(steps=150))
    gpu = ModelRunner.from_files(result.files, device=DEVICE)
    cpu = ModelRunner.from_files(result.files, device="cpu")
    context = list(b"the quick brown ")
    p_gpu = torch.softmax(gpu._forward(context, None)[0], -1)
    p_cpu = torch.softmax(cpu._forward(context, None)[0], -1)
    tv = 0.5 * float((p_gpu - p_cpu).abs().sum())
    assert tv < 0.05, f"total variation between GPU and CPU next-token distributions {tv:.4f}"
    g = "".join(p.text for p in gpu.generate("the quick brown ", max_tokens=12, temperature=0))
    c = "".join(p.text for p in cpu.generate("the quick brown ", max_tokens=12, temperature=0))
    assert g[:6] == c[:6], (g, c)


def check_seeded_sampling_repeats_on_cuda() -> None:
    """The same seed gives the same sample on the GPU, with and without the KV cache."""
    result = train(CORPUS.encode(), _cfg(steps=60))
    runner = ModelRunner.from_files(result.files, device=DEVICE)
    runs = ["".join(p.text for p in runner.generate("pack ", max_tokens=40, temperature=0.8, seed=7))
            for _ in range(2)]
    assert runs[0] == runs[1], runs


def check_bad_device_is_a_clear_error() -> None:
    """A GPU index the machine lacks fails before any work, naming the device."""
    bad = f"cuda:{torch.cuda.device_count()}"
    try:
        train(CORPUS.encode(), _cfg(device=bad, steps=1, warmup=0))
    except ValueError as err:
        assert bad in str(err), err
    else:
        raise AssertionError(f"training on {bad} did not fail")


CHECKS: list[Callable[[], None]] = [
    check_training_learns_on_cuda,
    check_stop_and_resume_on_cuda,
    check_cuda_and_cpu_inference_agree,
    check_seeded_sampling_repeats_on_cuda,
    check_bad_device_is_a_clear_error,
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
