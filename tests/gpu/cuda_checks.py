"""The GPU paths of the causal-lm trainer, of the Hugging Face model it writes and of the torch
engine, checked on a real CUDA device.

Plain functions with asserts, importing only torch, transformers, tokenizers and our ``ml``/
``trainers``/``engines`` modules, so they run both under pytest (``test_cuda_paths.py``, skipped
where CUDA is absent, i.e. on CI) and as a script on a bare GPU machine that has no pytest, Redis
or Ray: ``python -m tests.gpu.cuda_checks`` prints one line per check and exits non-zero on any
failure. ``PYLON_CHECK_DEVICE=cpu`` dry-runs the checks' logic on a machine without a GPU.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from pylon_services.engines.contract import EngineRequest, SamplingOptions
from pylon_services.engines.torch_engine.engine import TorchEngine
from pylon_services.engines.torch_engine.model import load_model
from pylon_services.engines.torch_engine.settings import TorchEngineConfig
from pylon_services.ingest.domain.tokenize import EOS_TOKEN, train_tokenizer
from pylon_services.ml.hf import write_hf_model
from pylon_services.ml.llama import Llama, preset
from pylon_services.trainers.causal_lm import MODEL_FILE, TRAINER_FILE, Hooks, Outcome, Trainer
from pylon_services.trainers.causal_lm_settings import Settings
from tests.support.hf_models import build_model_dir

# Overridable only to dry-run the checks' logic on a CPU-only machine.
DEVICE = os.environ.get("PYLON_CHECK_DEVICE", "cuda")
TEXT = ["the quick brown fox jumps over the lazy dog.", "pack my box with five dozen liquor jugs!",
        "héllo wörld ✓ 日本"] * 50
SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 128}
TOKENIZER = train_tokenizer(TEXT, vocab_size=320)
VOCAB = TOKENIZER.get_vocab_size()


class Chain:
    """Token windows of a fixed random successor chain (token t is followed by ``succ[t]``): a
    stream the model can learn to near-zero loss; the position is what a checkpoint keeps."""

    def __init__(self, state: dict[str, Any] | None, batch: int = 16, seq_len: int = 64) -> None:
        self.succ = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))
        self.batch, self.seq_len, self.pos = batch, seq_len, state["pos"] if state else 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            self.pos += 1
            t = torch.randint(0, VOCAB, (self.batch,), generator=torch.Generator().manual_seed(self.pos))
            rows = [t]
            for _ in range(self.seq_len):
                rows.append(self.succ[rows[-1]])
            yield torch.stack(rows, dim=1)

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos}


def _trainer(steps: int, *, stop_after: int | None = None, saved: dict[int, dict[str, bytes]] | None = None
             ) -> Trainer:
    """A causal-lm trainer on ``DEVICE`` (bf16 autocast and fused AdamW on CUDA)."""
    s = Settings.from_config({"model": SHAPE, "seq_len": 64, "batch_size": 16, "steps": steps, "lr": 3e-3,
                              "warmup": 10, "log_every": 20, "device": "cuda" if DEVICE == "cuda" else "cpu",
                              "compile": False})
    model = Llama(preset("tiny", vocab_size=VOCAB, eos_token_id=TOKENIZER.token_to_id(EOS_TOKEN), **SHAPE))
    model.reset_parameters(torch.Generator().manual_seed(0))
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return stop_after is not None and calls["n"] >= stop_after

    hooks = Hooks(log=lambda line: None, stop_requested=stop,
                  save_checkpoint=None if saved is None else lambda step, files, meta: saved.__setitem__(step, files))
    return Trainer(s, model, Chain, None, hooks, device=torch.device(DEVICE))


def check_training_learns_on_cuda() -> None:
    """200 steps (bf16 autocast, fused AdamW on CUDA) bring the loss far below uniform, and the
    checkpoint's weights are CPU float32 tensors a CPU-only host can load."""
    trainer = _trainer(200)
    outcome: Outcome = trainer.run()
    uniform = math.log(VOCAB)
    assert outcome.step == 200 and not outcome.stopped, outcome
    assert outcome.history[0][1] > 0.8 * uniform, outcome.history[0]
    assert outcome.loss < 0.3 * uniform, (outcome.loss, uniform)
    from safetensors.torch import load

    weights = load(trainer.checkpoint_files()[MODEL_FILE])
    assert all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights.values())
    cpu = Llama(trainer.spec)
    cpu.load_state_dict(weights, strict=True)


def check_stop_and_resume_on_cuda() -> None:
    """A run stopped at step 60 (preemption) checkpoints there, resumes on the GPU with its
    optimizer state and ends at the full step count."""
    saved: dict[int, dict[str, bytes]] = {}
    first = _trainer(120, stop_after=60, saved=saved).run()
    assert first.stopped and first.step == 60 and 60 in saved, (first.stopped, first.step, sorted(saved))
    assert b'"step": 60' in saved[60][TRAINER_FILE]
    second = _trainer(120)
    second.restore(saved[60], saved[60])
    outcome = second.run()
    assert outcome.step == 120 and not outcome.stopped
    assert outcome.loss < first.loss + 0.5, (first.loss, outcome.loss)


def check_cuda_and_cpu_inference_agree() -> None:
    """The Hugging Face directory of a GPU-trained model gives (nearly) the same next-token
    distribution under transformers on the GPU (bf16) as on the CPU (fp32), and greedy decoding
    agrees on the first tokens."""
    from transformers import AutoModelForCausalLM

    trainer = _trainer(150)
    trainer.run()
    with tempfile.TemporaryDirectory() as d:
        write_hf_model(d, trainer.model, tokenizer_json=TOKENIZER.to_str(), eos_token=EOS_TOKEN)
        loaded: Any = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
        gpu = loaded.to(DEVICE).eval()
        cpu = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    context = torch.tensor([TOKENIZER.encode("the quick brown").ids])
    with torch.no_grad():
        p_gpu = torch.softmax(gpu(context.to(DEVICE)).logits[0, -1].float().cpu(), -1)
        p_cpu = torch.softmax(cpu(context).logits[0, -1], -1)
        tv = 0.5 * float((p_gpu - p_cpu).abs().sum())
        assert tv < 0.05, f"total variation between GPU and CPU next-token distributions {tv:.4f}"
        g = gpu.generate(context.to(DEVICE), max_new_tokens=6, do_sample=False)[0].cpu().tolist()
        c = cpu.generate(context, max_new_tokens=6, do_sample=False)[0].tolist()
    assert g[:context.size(1) + 3] == c[:context.size(1) + 3], (g, c)


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
    check_training_learns_on_cuda,
    check_stop_and_resume_on_cuda,
    check_cuda_and_cpu_inference_agree,
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
