"""The vLLM backend of the engine port, on real vLLM (its CPU build) serving a small random-init
Llama: what a replica's caller sees (greedy output equal to transformers', streaming, parallel
sampling, logprobs, stop strings, abort, request rules, the prefix cache) through ``VllmEngine``.

Runs in the vLLM venv (``make test-vllm``); skipped wherever vLLM cannot be imported, as in the
main venv. One engine serves the whole module: vLLM's cold start takes a minute or more here.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

# Before vLLM starts its engine process (which inherits them): one OpenMP thread and no core
# pinning, on a 2-core machine that other processes share.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

pytest.importorskip("vllm", reason="vLLM is not installed in this venv (make test-vllm builds one that has it)")

import pytest_asyncio  # noqa: E402

from pylon_services.common.errors import AlreadyExists, InvalidArgument, Unavailable  # noqa: E402
from pylon_services.engines.contract import (  # noqa: E402
    FINISH_ABORT,
    FINISH_STOP,
    EngineRequest,
    RequestOutput,
    SamplingOptions,
)
from pylon_services.engines.vllm_engine import VllmEngine, load_vllm_engine  # noqa: E402
from tests.vllm.tiny_llama import CONTEXT, write_tiny_llama  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENGINE_CONFIG = {"dtype": "float32", "enforce_eager": True, "max_num_seqs": 8, "block_size": 32,
                 "kv_cache_memory_bytes": 64 << 20, "enable_prefix_caching": True}
PROMPTS = ["the quick brown fox", "pack my box with", "the lazy dog number 3", "jumps over"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_dir: Path) -> AsyncIterator[VllmEngine]:
    started = time.monotonic()
    # In a worker thread, as the replica server loads it (vLLM's loop task starts on first use).
    eng = await asyncio.to_thread(load_vllm_engine, str(model_dir), ENGINE_CONFIG)
    print(f"vLLM cold start: {time.monotonic() - started:.1f} s")
    yield eng
    await eng.shutdown()
    with pytest.raises(Unavailable):
        await eng.check_health()


def request(sampling: SamplingOptions, prompt: str = PROMPTS[0], **kw: Any) -> EngineRequest:
    return EngineRequest(request_id=uuid.uuid4().hex, prompt=prompt, sampling=sampling, **kw)


async def collect(engine: VllmEngine, req: EngineRequest) -> list[RequestOutput]:
    return [out async for out in engine.generate(req)]


def completions(outs: list[RequestOutput]) -> dict[int, tuple[str, list[int], str | None]]:
    """Per completion index: the concatenated text, token ids and the last finish reason."""
    result: dict[int, tuple[str, list[int], str | None]] = {}
    for out in outs:
        for d in out.deltas:
            text, ids, _ = result.get(d.index, ("", [], None))
            result[d.index] = (text + d.text, ids + list(d.token_ids), d.finish_reason)
    return result


async def eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def hf_greedy(model_dir: Path, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' own greedy ``generate`` on the same directory, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id)
    return [int(t) for t in out[0, ids.shape[1]:]]


async def test_engine_describes_itself_and_is_healthy(engine: VllmEngine) -> None:
    assert (engine.info.engine, engine.info.architecture, engine.info.device) == ("vllm", "LlamaForCausalLM", "cpu")
    assert (engine.info.max_model_len, engine.info.max_num_seqs) == (CONTEXT, 8)
    await engine.check_health()
    stats = engine.stats()
    assert stats.kv_blocks_total == (64 << 20) // (2 * 2 * 1 * 64 * 4 * 32)  # layers * K,V * heads * dim * fp32 * block


async def test_greedy_output_equals_transformers_greedy_while_sharing_the_batch(
        engine: VllmEngine, model_dir: Path) -> None:
    greedy = SamplingOptions(max_tokens=12, temperature=0.0)
    most_running = 0

    async def watch() -> None:
        nonlocal most_running
        while True:
            most_running = max(most_running, engine.stats().running)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(collect(engine, request(greedy, p)) for p in PROMPTS))
    finally:
        watcher.cancel()
    assert most_running >= 2, "the prompts never shared a batch"
    tokenizer = engine._tokenizer
    for prompt, outs in zip(PROMPTS, results, strict=True):
        text, ids, finish = completions(outs)[0]
        assert ids == hf_greedy(model_dir, prompt, 12), prompt
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
        assert finish in ("length", "stop")
        assert outs[-1].prompt_tokens == len(tokenizer.encode(prompt)) == engine.check_request(request(greedy, prompt))
        assert outs[-1].completion_tokens == len(ids)


async def test_streamed_deltas_concatenate_to_the_final_text(engine: VllmEngine) -> None:
    outs = await collect(engine, request(SamplingOptions(max_tokens=40, temperature=0.9, seed=11, ignore_eos=True)))
    assert len(outs) > 1 and [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    reasons = [d.finish_reason for o in outs for d in o.deltas]
    assert reasons[-1] == "length" and not any(reasons[:-1])
    text, ids, _ = completions(outs)[0]
    assert len(ids) == 40 == outs[-1].completion_tokens
    assert [o.completion_tokens for o in outs] == sorted(o.completion_tokens for o in outs)
    assert text == engine._tokenizer.decode(ids, skip_special_tokens=True)


async def test_two_seeded_completions_are_reproduced_by_the_same_seed(engine: VllmEngine) -> None:
    def sampled(seed: int) -> SamplingOptions:
        return SamplingOptions(max_tokens=16, temperature=1.0, n=2, seed=seed, ignore_eos=True)

    first = completions(await collect(engine, request(sampled(7))))
    again = completions(await collect(engine, request(sampled(7))))
    other = completions(await collect(engine, request(sampled(8))))
    assert sorted(first) == [0, 1]
    assert all(len(ids) == 16 and finish == "length" for _, ids, finish in first.values())
    assert first == again
    assert first[0][1] != first[1][1], "the two completions are one sample twice"
    assert other != first


async def test_logprobs_carry_the_top_k_alternatives(engine: VllmEngine) -> None:
    greedy = await collect(engine, request(SamplingOptions(max_tokens=8, temperature=0.0, logprobs=3)))
    steps = [(t, lp) for o in greedy for d in o.deltas for t, lp in zip(d.token_ids, d.logprobs, strict=True)]
    assert len(steps) == 8
    for token, lp in steps:
        assert lp.token_id == token and lp.logprob <= 0
        assert len(lp.top) == 3 and [x[1] for x in lp.top] == sorted((x[1] for x in lp.top), reverse=True)
        assert lp.top[0] == (token, lp.logprob)  # greedy picks the most likely
    sampled = await collect(engine, request(SamplingOptions(max_tokens=24, temperature=1.5, seed=5, logprobs=1)))
    for d in (d for o in sampled for d in o.deltas):
        for token, lp in zip(d.token_ids, d.logprobs, strict=True):
            assert lp.token_id == token and len(lp.top) == 1
            # The sampled token is reported even when it is not the most likely one.
            assert (lp.top[0][0] == token) == (lp.top[0][1] == lp.logprob)


async def test_stop_strings_and_stop_tokens_end_the_output_without_leaking(engine: VllmEngine) -> None:
    plain = SamplingOptions(max_tokens=30, temperature=0.0, ignore_eos=True)
    full_text, full_ids, _ = completions(await collect(engine, request(plain)))[0]
    start = next(i for i in range(4, len(full_text) - 3) if "\ufffd" not in full_text[i:i + 3])
    stop = full_text[start:start + 3]
    outs = await collect(engine, request(SamplingOptions(max_tokens=30, temperature=0.0, ignore_eos=True, stop=(stop,))))
    text, _, finish = completions(outs)[0]
    assert finish == FINISH_STOP
    assert text == full_text[:full_text.index(stop)]
    assert not any(stop in d.text for o in outs for d in o.deltas)

    stop_id = full_ids[5]
    ids = completions(await collect(engine, request(
        SamplingOptions(max_tokens=30, temperature=0.0, ignore_eos=True, stop_token_ids=(stop_id,)))))[0]
    assert ids[1] == full_ids[:full_ids.index(stop_id) + 1] and ids[2] == FINISH_STOP


async def test_abort_mid_stream_ends_it_and_frees_the_engine(engine: VllmEngine) -> None:
    req = request(SamplingOptions(max_tokens=400, temperature=0.0, ignore_eos=True))
    outs: list[RequestOutput] = []
    stream = engine.generate(req)
    try:
        async for out in stream:
            outs.append(out)
            if len(outs) == 3:
                assert engine.stats().running == 1
                assert await engine.abort(req.request_id) is True
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # on a failure, frees the engine for the next test
    assert outs[-1].finished and outs[-1].deltas[-1].finish_reason == FINISH_ABORT
    assert outs[-1].completion_tokens < 400
    await eventually(lambda: engine.stats().running == 0)
    assert await engine.abort(req.request_id) is False

    # Leaving the iterator early aborts the request too; while it runs, its id is taken.
    long = request(SamplingOptions(max_tokens=400, temperature=0.0, ignore_eos=True))
    stream = engine.generate(long)
    try:
        await anext(stream)
        await eventually(lambda: engine.stats().running == 1)
        with pytest.raises(AlreadyExists):
            await anext(engine.generate(long))
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    await eventually(lambda: engine.stats().running == 0)


@pytest.mark.parametrize(("make", "field"), [
    (lambda: EngineRequest("x", prompt_token_ids=(5,) * CONTEXT), "prompt"),
    (lambda: EngineRequest("x", prompt="the lazy dog jumps " * 200), "prompt"),
    (lambda: EngineRequest("x", prompt="fox", sampling=SamplingOptions(max_tokens=CONTEXT)), "sampling.max_tokens"),
    (lambda: EngineRequest("x", prompt="fox", sampling=SamplingOptions(temperature=-1)), "sampling.temperature"),
    (lambda: EngineRequest("x", prompt="fox", sampling=SamplingOptions(top_p=0.0)), "sampling.top_p"),
    (lambda: EngineRequest("x", prompt="fox", sampling=SamplingOptions(logprobs=21)), "sampling.logprobs"),
    (lambda: EngineRequest("x", prompt_token_ids=(1, 10**6)), "prompt_token_ids"),
    (lambda: EngineRequest("x", prompt="fox", sampling=SamplingOptions(stop_token_ids=(10**6,))),
     "sampling.stop_token_ids"),
])
async def test_bad_requests_raise_invalid_argument_naming_the_field(
        engine: VllmEngine, make: Callable[[], EngineRequest], field: str) -> None:
    req = make()
    with pytest.raises(InvalidArgument) as checked:
        engine.check_request(req)
    with pytest.raises(InvalidArgument) as generated:
        await anext(engine.generate(req))
    for err in (checked, generated):
        assert field in [v.field for v in err.value.violations]
    assert engine.stats().running == 0


async def test_unknown_or_bad_engine_config_is_refused_before_loading(model_dir: Path) -> None:
    for config, field in (({"swap_space": 4}, "engine_config.swap_space"),
                          ({"max_num_seqs": 0}, "engine_config.max_num_seqs"),
                          ({"dtype": "int3"}, "engine_config.dtype")):
        with pytest.raises(InvalidArgument) as err:
            load_vllm_engine(str(model_dir), config)
        assert [v.field for v in err.value.violations] == [field]


async def test_a_repeated_long_prompt_is_served_from_the_prefix_cache(engine: VllmEngine) -> None:
    prompt = f"{uuid.uuid4().hex} " + "pack my box with five dozen liquor jugs " * 12
    greedy = SamplingOptions(max_tokens=4, temperature=0.0)
    before = engine.stats()
    first = await collect(engine, request(greedy, prompt))
    middle = engine.stats()
    second = await collect(engine, request(greedy, prompt))
    after = engine.stats()
    n = first[-1].prompt_tokens
    assert n > 6 * 32
    assert first[-1].cached_tokens == 0
    # Every full 32-token block of the prompt but the one holding its last token is reused.
    assert second[-1].cached_tokens == (n - 1) // 32 * 32
    assert middle.prefix_cache_queries - before.prefix_cache_queries == n
    assert middle.prefix_cache_hits == before.prefix_cache_hits
    assert after.prefix_cache_hits - middle.prefix_cache_hits == second[-1].cached_tokens
    assert after.prompt_tokens - middle.prompt_tokens == n
    assert after.prefix_cache_hit_rate > 0
    assert completions(first) == completions(second)
