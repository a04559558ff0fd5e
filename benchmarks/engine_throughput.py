"""Output tokens/s of the torch engine with many concurrent requests against transformers, on the
same model, prompts and greedy settings, in one run.

Sides (each one at a time, on the same threads):
- ``hf_sequential``: ``model.generate`` one request after another (its own KV cache, no batching):
  what a replica did before continuous batching. Target: the engine is >= 5x it.
- ``hf_generate_batch``: transformers' own continuous batching (``generate_batch``, paged
  attention). Target: the engine is >= 1.0x it.
- ``pylon``: ``TorchEngine`` with every request submitted at once (continuous batching, paged KV,
  chunked prefill).
vLLM's CPU build is measured by ``--vllm-python`` (a separate venv) when given.

Every request arrives at t=0. TTFT is the time from then to a request's first output token
(queueing included, as a client sees it); TPOT is (finish - first token) / (tokens - 1), averaged
over requests. Models are random-init Llama configs of the ``tiny`` and ``124m`` presets
(``ml/presets.py``); every request generates exactly ``--max-tokens`` tokens (EOS ignored).
Not a test: it never fails on the figures.

    .venv/bin/python benchmarks/engine_throughput.py --preset tiny --preset 124m
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "services"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))


def build(directory: Path, preset: str, vocab: int) -> Path:
    import torch
    import transformers

    from pylon_services.ml.presets import PRESETS
    from tests.support.hf_models import tokenizer_json

    torch.manual_seed(0)
    shape = dict(PRESETS[preset])
    if preset == "tiny":  # heads of 64, which vLLM's CPU attention needs (the preset's are 32 wide)
        shape.update(num_attention_heads=2, num_key_value_heads=1)
    config = transformers.LlamaConfig(vocab_size=vocab, eos_token_id=0, bos_token_id=1,
                                      architectures=["LlamaForCausalLM"], **shape)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    (directory / "tokenizer.json").write_text(tokenizer_json())
    return directory


def prompts(count: int, length: int, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(2, min(vocab, 384)) for _ in range(length + (i % 8))] for i in range(count)]


def summary(name: str, starts: float, firsts: list[float], ends: list[float], tokens: int) -> dict[str, Any]:
    wall = max(ends) - starts
    return {"side": name, "output_tokens_per_s": round(tokens / wall, 1), "wall_s": round(wall, 2),
            "ttft_ms_mean": round(1000 * statistics.mean(f - starts for f in firsts), 1),
            "tpot_ms_mean": round(1000 * statistics.mean((e - f) for f, e in zip(firsts, ends, strict=True))
                                  / max(tokens // len(firsts) - 1, 1), 2)}


def hf_sequential(directory: Path, batch: list[list[int]], n: int) -> dict[str, Any]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    firsts, ends = [], []

    class FirstToken(transformers.generation.streamers.BaseStreamer):
        calls = 0

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls == 2:  # the first call carries the prompt
                firsts.append(time.perf_counter())

        def end(self) -> None:
            ends.append(time.perf_counter())

    with torch.inference_mode():
        model.generate(torch.tensor([batch[0]]), max_new_tokens=2, do_sample=False)  # warm-up
    firsts.clear()
    ends.clear()
    start = time.perf_counter()
    with torch.inference_mode():
        for p in batch:
            model.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           streamer=FirstToken())
    return summary("hf_sequential", start, firsts, ends, n * len(batch))


def hf_generate_batch(directory: Path, batch: list[list[int]], n: int) -> dict[str, Any]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").eval()
    config = transformers.GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=-1)
    # The same limits as the engine's side: 64 sequences, 512 tokens per step.
    cb = transformers.ContinuousBatchingConfig(page_size=16, num_blocks=2048, max_batch_tokens=512,
                                               max_requests_per_batch=64)
    with torch.inference_mode():  # warm-up
        model.generate_batch(inputs=batch[:2], generation_config=transformers.GenerationConfig(
            max_new_tokens=2, do_sample=False, eos_token_id=-1), continuous_batching_config=cb)
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = model.generate_batch(inputs=batch, generation_config=config, continuous_batching_config=cb,
                                       record_timestamps=True)
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    # Timestamps are time.perf_counter() readings, one per generated token.
    firsts = [o.timestamps[0] for o in outputs.values()]
    ends = [o.timestamps[-1] for o in outputs.values()]
    return summary("hf_generate_batch", start, firsts, ends, tokens)


SETTINGS = {"max_num_seqs": 64, "max_num_batched_tokens": 512, "kv_cache_memory_bytes": 512 << 20}


def pylon(directory: Path, batch: list[list[int]], n: int) -> dict[str, Any]:
    from pylon_services.engines.replica import load_engine

    return serve("pylon", load_engine("torch", str(directory), SETTINGS), batch, n)


def vllm(directory: Path, batch: list[list[int]], n: int) -> dict[str, Any]:
    """vLLM's CPU build behind the same port, with the same limits (run in vLLM's own venv)."""
    from pylon_services.engines.replica import load_engine

    return serve("vllm", load_engine("vllm", str(directory), {**SETTINGS, "dtype": "float32", "enforce_eager": True}),
                 batch, n)


async def timed(engine: Any, i: str, p: list[int], tokens: int, firsts: list[float], ends: list[float]) -> int:
    """One greedy request of exactly ``tokens`` through the engine port; appends the times of its
    first and last token and returns the tokens it got."""
    from pylon_services.engines.contract import EngineRequest, SamplingOptions

    count = 0
    options = SamplingOptions(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    async for out in engine.generate(EngineRequest(i, prompt_token_ids=tuple(p), sampling=options)):
        if count == 0:
            firsts.append(time.perf_counter())
        count += sum(len(d.token_ids) for d in out.deltas)
    ends.append(time.perf_counter())
    return count


def serve(name: str, engine: Any, batch: list[list[int]], n: int) -> dict[str, Any]:
    """A warm-up of two short requests, then every request submitted at once through the port."""

    async def main() -> dict[str, Any]:
        try:
            await asyncio.gather(*(timed(engine, f"warm{i}", p, 4, [], []) for i, p in enumerate(batch[:2])))
            firsts: list[float] = []
            ends: list[float] = []
            start = time.perf_counter()
            counts = await asyncio.gather(*(timed(engine, f"r{i}", p, n, firsts, ends) for i, p in enumerate(batch)))
            return summary(name, start, firsts, ends, sum(counts))
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def vllm_in_its_venv(python: str, preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the vLLM side in vLLM's venv (its transformers pin differs from ours)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.join(here, "..", p) for p in ("", "services", "sdk")),
           "OMP_NUM_THREADS": str(args.threads), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    out = subprocess.run([python, __file__, "--only-vllm", "--preset", preset, "--requests", str(args.requests),
                          "--prompt-len", str(args.prompt_len), "--max-tokens", str(args.max_tokens),
                          "--threads", str(args.threads)], env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"side": "vllm", "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return dict(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", default=[], choices=["tiny", "124m"])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vllm-python", default="", help="python of a venv with vLLM (scripts/vllm_venv.sh)")
    parser.add_argument("--skip-sequential", action="store_true",
                        help="leave out transformers' sequential generate (the slowest side, minutes at 124m)")
    parser.add_argument("--only-vllm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for preset in args.preset or ["tiny"]:
        vocab = 1024 if preset == "tiny" else 50257
        batch = prompts(args.requests, args.prompt_len, vocab)
        with tempfile.TemporaryDirectory() as tmp:
            directory = build(Path(tmp), preset, vocab)
            if args.only_vllm:
                print(json.dumps(vllm(directory, batch, args.max_tokens)), flush=True)
                continue
            sides = (hf_generate_batch, pylon) if args.skip_sequential else (hf_sequential, hf_generate_batch, pylon)
            results = [side(directory, batch, args.max_tokens) for side in sides]
        if args.vllm_python:
            results.insert(-1, vllm_in_its_venv(args.vllm_python, preset, args))
        ours = results[-1]["output_tokens_per_s"]
        for r in results:
            if "output_tokens_per_s" in r:
                r["pylon_over_this"] = round(ours / r["output_tokens_per_s"], 2)
            print(json.dumps({"preset": preset, "requests": args.requests, **r}), flush=True)


if __name__ == "__main__":
    main()
