"""Two claims about the torch engine, each against a baseline in the same run.

1. **Prefix caching**: time to first token of requests that share a long system prompt
   (``--system-tokens``, default 1,000) and differ in a short suffix, sent one after another, with
   the prefix cache on against off. The first request fills the cache and is left out.
2. **Memory under overload**: ``--requests`` concurrent requests whose prompts and outputs need
   several times the KV pool. Reported: the pool's size, the process's resident memory with the
   model loaded (before the engine), with the engine's pool allocated, and its peak under the load
   (sampled every 10 ms), the most blocks in use, preemptions, and whether every request finished.
   The claim: peak resident memory stays under the memory with the model loaded plus the pool
   plus a bounded transient (one step's activations and gathers).

Model: a random-init Llama of the ``tiny`` preset (``ml/presets.py``). Not a test: it never fails
on the figures.

    .venv/bin/python benchmarks/engine_prefix_and_memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "services"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))

from benchmarks.engine_throughput import build  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def engine_for(directory: Path, **settings: Any) -> Any:
    from pylon_services.engines.torch_engine.engine import TorchEngine
    from pylon_services.engines.torch_engine.model import load_model
    from pylon_services.engines.torch_engine.settings import TorchEngineConfig

    cfg = TorchEngineConfig(**settings)
    return TorchEngine(load_model(directory, cfg), cfg)


async def first_token_s(engine: Any, request_id: str, prompt: list[int]) -> float:
    from pylon_services.engines.contract import EngineRequest, SamplingOptions

    start, first = time.perf_counter(), 0.0
    async for out in engine.generate(EngineRequest(request_id, prompt_token_ids=tuple(prompt), sampling=(
            SamplingOptions(max_tokens=8, temperature=0.0, ignore_eos=True)))):
        if not first and any(d.token_ids for d in out.deltas):
            first = time.perf_counter() - start
    return first


def prefix_claim(directory: Path, system_tokens: int, requests: int) -> dict[str, Any]:
    import random

    rng = random.Random(0)
    system = [rng.randrange(2, 384) for _ in range(system_tokens)]
    prompts = [system + [rng.randrange(2, 384) for _ in range(16)] for _ in range(requests + 1)]
    out: dict[str, Any] = {"claim": "prefix caching", "system_tokens": system_tokens, "requests": requests}
    for caching in (False, True):
        engine = engine_for(directory, enable_prefix_caching=caching, max_num_batched_tokens=2048)

        async def run(engine: Any = engine) -> list[float]:
            times = [await first_token_s(engine, f"p{i}", p) for i, p in enumerate(prompts)]
            await engine.shutdown()
            return times[1:]  # the first fills the cache

        ttft = asyncio.run(run())
        out[f"ttft_ms_{'on' if caching else 'off'}"] = round(1000 * statistics.median(ttft), 1)
        if caching:
            out["hit_rate"] = round(engine.stats().prefix_cache_hit_rate, 3)
    out["off_over_on"] = round(out["ttft_ms_off"] / out["ttft_ms_on"], 1)
    return out


def memory_claim(directory: Path, pool_mib: int, requests: int, prompt_len: int, max_tokens: int) -> dict[str, Any]:
    import random

    from pylon_services.engines.contract import EngineRequest, SamplingOptions
    from pylon_services.engines.torch_engine.model import load_model
    from pylon_services.engines.torch_engine.settings import TorchEngineConfig

    load_model(directory, TorchEngineConfig())  # the model alone, once, so the figure below includes its pages
    with_model = rss_mib()
    engine = engine_for(directory, kv_cache_memory_bytes=pool_mib << 20, max_num_seqs=256,
                        enable_prefix_caching=False)
    with_pool = rss_mib()
    rng = random.Random(1)
    peak = [with_pool, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_mib())
            peak[1] = max(peak[1], engine.stats().kv_blocks_used)

    async def one(i: int) -> int:
        prompt = tuple(rng.randrange(2, 384) for _ in range(prompt_len))
        options = SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        count = 0
        async for out in engine.generate(EngineRequest(f"m{i}", prompt_token_ids=prompt, sampling=options)):
            count += sum(len(d.token_ids) for d in out.deltas)
        return count

    async def main() -> list[int]:
        try:
            return list(await asyncio.gather(*(one(i) for i in range(requests))))
        finally:
            await engine.shutdown()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    counts = asyncio.run(main())
    done.set()
    sampler.join()
    stats = engine.stats()
    return {"claim": "memory under overload", "pool_mib": pool_mib,
            "pool_tokens": engine.pool.num_blocks * engine.pool.block_size,
            "tokens_of_all_requests": requests * (prompt_len + max_tokens), "rss_mib_with_model": round(with_model),
            "rss_mib_with_pool": round(with_pool), "rss_mib_peak": round(peak[0]),
            "peak_over_model_plus_pool_mib": round(peak[0] - with_model - pool_mib),
            "max_blocks_used": peak[1], "blocks_total": stats.kv_blocks_total, "preemptions": stats.preemptions,
            "all_finished": all(c == max_tokens for c in counts), "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--prefix-requests", type=int, default=8)
    parser.add_argument("--pool-mib", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--prompt-len", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        directory = build(Path(tmp), "tiny", 1024)
        print(json.dumps(prefix_claim(directory, args.system_tokens, args.prefix_requests)), flush=True)
        print(json.dumps(memory_claim(directory, args.pool_mib, args.requests, args.prompt_len, args.max_tokens)),
              flush=True)


if __name__ == "__main__":
    main()
