"""Decode speed on one device: the torch engine against transformers' ``generate`` on the same
device and model, at batch 1 and batch 32, in one run, with the memory-bandwidth bound at batch 1.

The claim it backs (issue 14, on a lent H100/H200): at batch 1 the engine decodes >= 10x as many
tokens/s as ``generate`` for the ``124m`` preset, and reaches >= 50% of the bandwidth bound for
the ``1b`` preset. The bound is the tokens/s of reading every weight once per token: weight
bytes / the device's copy bandwidth, measured here (a device-to-device copy of 1 GiB, bytes read
plus written; a datasheet figure would flatter it). On CPU (``--device cpu --preset tiny``) it
runs as a check of the script itself; its figures say little about GPUs.

Every side decodes ``--new-tokens`` tokens greedily (EOS ignored) after prompts of
``--prompt-len`` tokens; decode tokens/s counts the tokens after each request's first, over the
time from the last first token to the last token, so prefill is left out. ``generate`` runs the
batch as one padded call (equal-length prompts, so no padding), with its default cache. Models
are random-init Llama configs of ``ml/presets.py`` in bfloat16 on CUDA, float32 on CPU. Not a
test: it never fails on the figures.

    .venv/bin/python benchmarks/engine_decode.py --device cuda --preset 124m --preset 1b
    .venv/bin/python benchmarks/engine_decode.py --device cpu --preset tiny --new-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from engine_throughput import build, prompts, timed  # the CPU benchmark's models, prompts and timing


def bandwidth(device: Any) -> float:
    """Bytes/s of a device-to-device copy (each byte read and written counts twice)."""
    import torch

    n = (1 << 30) // 4 if device.type == "cuda" else (1 << 28) // 4
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    for _ in range(2):
        dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * 4 * n / best


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_decode(directory: Path, device: Any, dtype: Any, batch: list[list[int]], n: int) -> float:
    """Decode tokens/s of ``generate`` on the whole batch at once."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
    marks: list[float] = []

    class Clock(transformers.generation.streamers.BaseStreamer):
        def put(self, value: Any) -> None:  # the first call carries the prompt, the second the first token
            _sync(device)
            marks.append(time.perf_counter())

        def end(self) -> None:
            _sync(device)
            marks.append(time.perf_counter())

    ids = torch.tensor(batch, device=device)
    model.generation_config.pad_token_id = 0
    with torch.inference_mode():
        model.generate(ids[:, :8], max_new_tokens=4, do_sample=False)  # warm-up
        if len(batch) == 1:
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                           streamer=Clock())
            return (n - 1) / (marks[-1] - marks[1])
        # The streamer takes batch 1 only: the whole call's time, less a 1-token call's.
        _sync(device)
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        _sync(device)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None)
        _sync(device)
        return len(batch) * (n - 1) / (time.perf_counter() - t - prefill)


def engine_decode(directory: Path, device: str, batch: list[list[int]], n: int) -> float:
    """Decode tokens/s of the torch engine with the whole batch submitted at once."""
    from pylon_services.engines.replica import load_engine

    engine = load_engine("torch", str(directory), {"device": device, "max_num_seqs": 64,
                                                     "max_num_batched_tokens": 2048,
                                                     "kv_cache_memory_bytes": 1 << 30})

    async def main() -> float:
        try:
            await asyncio.gather(*(timed(engine, f"warm{i}", p, 8, [], []) for i, p in enumerate(batch)))
            firsts: list[float] = []
            ends: list[float] = []
            counts = await asyncio.gather(*(timed(engine, f"r{i}", p, n, firsts, ends) for i, p in enumerate(batch)))
            return sum(c - 1 for c in counts) / (max(ends) - max(firsts))
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--preset", action="append", default=[], choices=["tiny", "124m", "1b"])
    parser.add_argument("--batch", action="append", type=int, default=[], help="batch sizes (default 1 and 32)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --preset tiny to check the script")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bw = bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for preset in args.preset or ["124m"]:
        vocab = 1024 if preset == "tiny" else 50257
        with tempfile.TemporaryDirectory() as tmp:
            directory = build(Path(tmp), preset, vocab)
            weights = _weight_bytes(directory, dtype)
            bound = bw / weights
            for b in args.batch or [1, 32]:
                batch = [p[:args.prompt_len] for p in prompts(b, args.prompt_len, vocab)]
                hf = hf_decode(directory, device, dtype, batch, args.new_tokens)
                ours = engine_decode(directory, args.device, batch, args.new_tokens)
                row: dict[str, Any] = {"device": name, "preset": preset, "batch": b, "weight_mb": round(weights / 1e6),
                                       "copy_gb_s": round(bw / 1e9), "hf_generate_tok_s": round(hf, 1),
                                       "engine_tok_s": round(ours, 1), "engine_over_hf": round(ours / hf, 2)}
                if b == 1:
                    row.update(bound_tok_s=round(bound, 1), engine_of_bound=round(ours / bound, 3))
                print(json.dumps(row), flush=True)


def _weight_bytes(directory: Path, dtype: Any) -> int:
    """Bytes of every stored parameter at ``dtype`` (tied embeddings once), from the safetensors."""
    from safetensors import safe_open

    total = 0
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total * dtype.itemsize


if __name__ == "__main__":
    main()
