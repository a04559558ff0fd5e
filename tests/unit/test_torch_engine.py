"""The torch engine (engines/torch_engine): continuous batching over a paged KV cache, prefix
caching, sampling and streaming, on real transformers models with random weights.

The reference everywhere is transformers' own ``generate`` on the same directory: greedy output
must equal it token for token while requests of other lengths share the batch, however the KV
pool is cut into blocks, chunked, shared or preempted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pylon_services.common.errors import InvalidArgument
from pylon_services.engines.contract import EngineRequest, RequestOutput, SamplingOptions
from pylon_services.engines.torch_engine.detokenize import IncrementalDecoder
from pylon_services.engines.torch_engine.engine import TorchEngine
from pylon_services.engines.torch_engine.model import load_model
from pylon_services.engines.torch_engine.onednn import OneDNNLinear
from pylon_services.engines.torch_engine.settings import TorchEngineConfig
from tests.support.hf_models import EOS, build_model_dir

PROMPTS = [[5, 9, 33, 7, 100, 20, 3, 8, 9, 10, 11, 12, 13, 14, 40, 41, 42, 43, 44][:n] for n in (3, 19, 7, 1, 9, 12)]


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numerics in the engine's thread and the reference
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("llama"), "llama")


def engine_for(directory: Path, **settings: Any) -> TorchEngine:
    cfg = TorchEngineConfig(**{"block_size": 4, "max_num_batched_tokens": 16, **settings})
    return TorchEngine(load_model(directory, cfg), cfg)


def hf_greedy(directory: Path, prompt: list[int], n: int) -> list[int]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


async def collect(engine: TorchEngine, request: EngineRequest) -> list[RequestOutput]:
    return [out async for out in engine.generate(request)]


def tokens_of(outputs: list[RequestOutput], index: int = 0) -> list[int]:
    return [t for o in outputs for d in o.deltas if d.index == index for t in d.token_ids]


def text_of(outputs: list[RequestOutput], index: int = 0) -> str:
    return "".join(d.text for o in outputs for d in o.deltas if d.index == index)


def greedy(n: int, **kw: Any) -> SamplingOptions:
    return SamplingOptions(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


async def run_all(engine: TorchEngine, requests: list[EngineRequest]) -> list[list[RequestOutput]]:
    try:
        return list(await asyncio.gather(*(collect(engine, r) for r in requests)))
    finally:
        await engine.shutdown()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "mistral"])
def test_greedy_equals_transformers_while_other_requests_share_the_batch(arch: str, tmp_path: Path) -> None:
    directory = build_model_dir(tmp_path, arch)
    engine = engine_for(directory)
    requests = [EngineRequest(f"r{i}", prompt_token_ids=tuple(p), sampling=greedy(10)) for i, p in enumerate(PROMPTS)]
    results = asyncio.run(run_all(engine, requests))
    for prompt, outputs in zip(PROMPTS, results, strict=True):
        assert tokens_of(outputs) == hf_greedy(directory, prompt, 10), prompt
        assert outputs[-1].finished and outputs[-1].deltas[-1].finish_reason == "length"
        assert outputs[-1].completion_tokens == 10 and outputs[-1].prompt_tokens == len(prompt)


def test_large_cpu_linears_run_through_onednn_and_greedy_still_equals_transformers(tmp_path: Path) -> None:
    """512-wide layers are past onednn.MIN_WEIGHT_ELEMENTS: the engine swaps them for prepacked
    oneDNN linears (the reference keeps nn.Linear) and its greedy output stays the same."""
    directory = build_model_dir(tmp_path, "llama", hidden_size=512, intermediate_size=1024, num_attention_heads=8,
                                num_key_value_heads=4)
    engine = engine_for(directory)
    swapped = [m for m in engine.m.model.modules() if isinstance(m, OneDNNLinear)]
    # q, o, gate, up and down of both layers; k and v (512x256) are below the threshold.
    assert len(swapped) == 2 * 5
    requests = [EngineRequest(f"r{i}", prompt_token_ids=tuple(p), sampling=greedy(10)) for i, p in enumerate(PROMPTS)]
    results = asyncio.run(run_all(engine, requests))
    for prompt, outputs in zip(PROMPTS, results, strict=True):
        assert tokens_of(outputs) == hf_greedy(directory, prompt, 10), prompt
    off = engine_for(directory, onednn_linear=False)
    assert not any(isinstance(m, OneDNNLinear) for m in off.m.model.modules())
    asyncio.run(off.shutdown())


def test_a_onednn_linear_equals_nn_linear_for_any_batch_and_rank() -> None:
    torch.manual_seed(0)
    for bias in (False, True):
        linear = torch.nn.Linear(512, 768, bias=bias)
        fast = OneDNNLinear(linear)
        for shape in ((1, 512), (32, 512), (3, 7, 512), (1, 100, 512)):
            x = torch.randn(*shape)
            with torch.inference_mode():
                torch.testing.assert_close(fast(x), linear(x), atol=2e-4, rtol=1e-4)


def test_a_kv_budget_too_small_for_the_load_preempts_and_still_answers_exactly(llama_dir: Path) -> None:
    # 10 blocks of 4 tokens: the six requests need 2-4 blocks each at once, so they cannot all run.
    engine = engine_for(llama_dir, kv_cache_memory_bytes=10 * _block_bytes(llama_dir))
    assert engine.pool.num_blocks == 10
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, engine.stats().kv_blocks_used)
            await asyncio.sleep(0.001)

    async def main() -> list[list[RequestOutput]]:
        watcher = asyncio.create_task(watch())
        try:
            return await run_all(engine, [EngineRequest(f"r{i}", prompt_token_ids=tuple(p), sampling=greedy(12))
                                          for i, p in enumerate(PROMPTS)])
        finally:
            watcher.cancel()

    results = asyncio.run(main())
    for prompt, outputs in zip(PROMPTS, results, strict=True):
        assert tokens_of(outputs) == hf_greedy(llama_dir, prompt, 12)
    assert engine.stats().preemptions > 0
    assert peak <= 10 and engine.stats().kv_blocks_used == 0


def _block_bytes(directory: Path) -> int:
    loaded = load_model(directory, TorchEngineConfig())
    return 2 * loaded.layers * 4 * loaded.kv_heads * loaded.head_dim * 4


def test_a_shared_prefix_is_served_from_the_cache(llama_dir: Path) -> None:
    engine = engine_for(llama_dir)
    prompt = tuple(range(10, 30))  # 20 tokens: 4 full blocks of 4 cached, the last token recomputed

    async def main() -> tuple[list[RequestOutput], list[RequestOutput]]:
        first = await collect(engine, EngineRequest("a", prompt_token_ids=prompt, sampling=greedy(4)))
        second = await collect(engine, EngineRequest("b", prompt_token_ids=prompt, sampling=greedy(4)))
        await engine.shutdown()
        return first, second

    first, second = asyncio.run(main())
    assert first[-1].cached_tokens == 0 and second[-1].cached_tokens == 16
    assert tokens_of(first) == tokens_of(second) == hf_greedy(llama_dir, list(prompt), 4)
    stats = engine.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (40, 16)


def test_without_prefix_caching_nothing_is_reused(llama_dir: Path) -> None:
    engine = engine_for(llama_dir, enable_prefix_caching=False)
    prompt = tuple(range(10, 30))
    results = asyncio.run(run_all(engine, [EngineRequest("a", prompt_token_ids=prompt, sampling=greedy(2))]))
    assert results[0][-1].cached_tokens == 0 and engine.stats().prefix_cache_hits == 0


def test_a_seed_reproduces_the_sample_whatever_shares_the_batch(llama_dir: Path) -> None:
    sampled = SamplingOptions(max_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = asyncio.run(run_all(engine_for(llama_dir), [EngineRequest("s", prompt_token_ids=(5, 6, 7),
                                                                     sampling=sampled)]))[0]
    crowd = [EngineRequest(f"o{i}", prompt_token_ids=tuple(p), sampling=SamplingOptions(max_tokens=8))
             for i, p in enumerate(PROMPTS)]
    crowded = asyncio.run(run_all(engine_for(llama_dir), [*crowd, EngineRequest("s", prompt_token_ids=(5, 6, 7),
                                                                                sampling=sampled)]))[-1]
    other_seed = asyncio.run(run_all(engine_for(llama_dir), [EngineRequest(
        "s", prompt_token_ids=(5, 6, 7), sampling=SamplingOptions(max_tokens=8, seed=99, ignore_eos=True))]))[0]
    assert tokens_of(alone) == tokens_of(crowded)
    assert tokens_of(alone) != tokens_of(other_seed)


def test_n_completions_share_the_prompt_blocks_and_differ(llama_dir: Path) -> None:
    engine = engine_for(llama_dir)
    prompt = tuple(range(40, 58))  # 18 tokens: 4 full blocks shared, the partial one per completion
    options = SamplingOptions(max_tokens=6, temperature=1.0, seed=7, n=3, ignore_eos=True, logprobs=2)
    outputs = asyncio.run(run_all(engine, [EngineRequest("n", prompt_token_ids=prompt, sampling=options)]))[0]
    completions = [tokens_of(outputs, i) for i in range(3)]
    assert all(len(c) == 6 for c in completions) and len({tuple(c) for c in completions}) > 1
    assert outputs[-1].completion_tokens == 18 and outputs[-1].prompt_tokens == 18
    logprobs = [lp for o in outputs for d in o.deltas for lp in d.logprobs]
    assert len(logprobs) == 18 and all(len(lp.top) == 2 and lp.logprob <= 0 for lp in logprobs)
    assert engine.stats().kv_blocks_used == 0


def test_penalties_change_greedy_output(llama_dir: Path) -> None:
    prompt = (5, 5, 5, 9, 9)
    plain = asyncio.run(run_all(engine_for(llama_dir), [EngineRequest("p", prompt_token_ids=prompt,
                                                                     sampling=greedy(12))]))[0]
    penalized = asyncio.run(run_all(engine_for(llama_dir), [EngineRequest(
        "p", prompt_token_ids=prompt, sampling=greedy(12, repetition_penalty=5.0, frequency_penalty=2.0))]))[0]
    assert tokens_of(plain) != tokens_of(penalized)
    assert len(set(tokens_of(penalized))) == 12  # every repeat was penalised away


def test_streamed_text_is_the_decoded_output_and_stops_before_a_stop_string(llama_dir: Path) -> None:
    free_outputs = asyncio.run(collect_text(engine_for(llama_dir), greedy(24)))
    free = text_of(free_outputs)
    loaded = load_model(llama_dir, TorchEngineConfig())
    assert free == loaded.tokenizer.decode(tokens_of(free_outputs))  # streaming splits nothing differently
    stop = free[5:8]
    stopped = text_of(asyncio.run(collect_text(engine_for(llama_dir), greedy(24, stop=(stop,)))))
    assert stopped == free[:free.index(stop)] and stop not in stopped


def test_multi_byte_characters_stream_whole(llama_dir: Path) -> None:
    tokenizer = load_model(llama_dir, TorchEngineConfig()).tokenizer
    text = "Größe 東京 🚀 naïve, Ωñ 😀 北京"  # the last characters are not in its training text: byte tokens
    ids = tokenizer.encode(text).ids
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert len(ids) > len([p for p in pieces if p])  # some characters span several tokens


async def collect_text(engine: TorchEngine, options: SamplingOptions) -> list[RequestOutput]:
    outputs = await collect(engine, EngineRequest("t", prompt="Größe 東京 🚀", sampling=options))
    await engine.shutdown()
    return outputs


def test_a_stop_token_id_ends_a_completion_after_that_token(llama_dir: Path) -> None:
    ids = hf_greedy(llama_dir, [5, 6], 8)
    stop_at = ids[3]
    outputs = asyncio.run(run_all(engine_for(llama_dir), [EngineRequest("e", prompt_token_ids=(5, 6), sampling=greedy(
        8, stop_token_ids=(stop_at,)))]))[0]
    assert tokens_of(outputs) == ids[:ids.index(stop_at) + 1]
    assert outputs[-1].deltas[-1].finish_reason == "stop"


def test_the_models_eos_ends_a_completion_unless_ignored(llama_dir: Path, tmp_path: Path) -> None:
    ids = hf_greedy(llama_dir, [5, 6], 8)
    eos = ids[2]
    directory = build_model_dir(tmp_path, "llama", eos_token_id=eos)  # the same weights (same seed)
    ended = asyncio.run(run_all(engine_for(directory), [EngineRequest(
        "e", prompt_token_ids=(5, 6), sampling=SamplingOptions(max_tokens=8, temperature=0.0))]))[0]
    ignored = asyncio.run(run_all(engine_for(directory), [EngineRequest(
        "e", prompt_token_ids=(5, 6), sampling=greedy(8))]))[0]
    assert tokens_of(ended) == ids[:ids.index(eos) + 1] and ended[-1].deltas[-1].finish_reason == "stop"
    assert tokens_of(ignored) == ids


def test_abort_and_leaving_the_stream_free_the_blocks(llama_dir: Path) -> None:
    engine = engine_for(llama_dir)

    async def main() -> None:
        stream = engine.generate(EngineRequest("x", prompt_token_ids=(1, 2, 3), sampling=greedy(400)))
        await stream.__anext__()
        assert engine.stats().running == 1 and engine.stats().kv_blocks_used > 0
        await stream.aclose()  # the client went away
        aborted = engine.generate(EngineRequest("y", prompt_token_ids=(1, 2, 3), sampling=greedy(400)))
        await aborted.__anext__()
        assert await engine.abort("y")
        last = [o async for o in aborted][-1]
        assert last.finished and last.deltas[-1].finish_reason == "abort"
        for _ in range(100):
            if engine.stats().running == 0 and engine.stats().kv_blocks_used == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.stats().running == 0 and engine.stats().kv_blocks_used == 0
        assert not await engine.abort("y")
        await engine.shutdown()

    asyncio.run(main())


@pytest.mark.parametrize(("options", "field"), [
    (SamplingOptions(top_p=0.0), "sampling.top_p"),
    (SamplingOptions(top_p=1.5), "sampling.top_p"),
    (SamplingOptions(temperature=-1.0), "sampling.temperature"),
    (SamplingOptions(temperature=float("nan")), "sampling.temperature"),
    (SamplingOptions(n=99), "sampling.n"),
    (SamplingOptions(max_tokens=0), "sampling.max_tokens"),
    (SamplingOptions(max_tokens=500), "sampling.max_tokens"),  # 500 + the prompt exceed 512
    (SamplingOptions(min_p=2.0), "sampling.min_p"),
    (SamplingOptions(logprobs=50), "sampling.logprobs"),
    (SamplingOptions(stop=("",)), "sampling.stop"),
    (SamplingOptions(stop_token_ids=(10**6,)), "sampling.stop_token_ids"),
])
def test_bad_sampling_values_are_refused_naming_the_field(llama_dir: Path, options: SamplingOptions,
                                                          field: str) -> None:
    engine = engine_for(llama_dir)
    try:
        with pytest.raises(InvalidArgument) as e:
            engine.check_request(EngineRequest("b", prompt_token_ids=tuple(range(20)), sampling=options))
        assert field in [v.field for v in e.value.violations]
    finally:
        asyncio.run(engine.shutdown())


def test_prompts_the_context_cannot_hold_are_refused(llama_dir: Path) -> None:
    engine = engine_for(llama_dir)
    try:
        for request, field in ((EngineRequest("l", prompt_token_ids=tuple([5] * 512)), "prompt"),
                               (EngineRequest("e"), "prompt"),
                               (EngineRequest("v", prompt_token_ids=(384,)), "prompt_token_ids")):
            with pytest.raises(InvalidArgument) as e:
                engine.check_request(request)
            assert e.value.violations[0].field == field
    finally:
        asyncio.run(engine.shutdown())


def test_a_directory_without_a_tokenizer_or_of_an_unknown_architecture_fails_to_load(tmp_path: Path) -> None:
    no_tokenizer = build_model_dir(tmp_path / "a", "llama", tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_model(no_tokenizer, TorchEngineConfig())
    other = build_model_dir(tmp_path / "b", "llama")
    config = (other / "config.json").read_text().replace("LlamaForCausalLM", "FalconForCausalLM")
    (other / "config.json").write_text(config)
    with pytest.raises(ValueError, match="cannot serve architecture"):
        load_model(other, TorchEngineConfig())


def test_bad_engine_settings_are_refused_naming_the_key() -> None:
    for config, field in (({"max_num_seqs": 0}, "engine_config.max_num_seqs"),
                          ({"block_size": 3}, "engine_config.block_size"),
                          ({"dtype": "int8"}, "engine_config.dtype"),
                          ({"swap_space": 4}, "engine_config.swap_space"),
                          ({"onednn_linear": "yes"}, "engine_config.onednn_linear")):
        with pytest.raises(InvalidArgument) as e:
            TorchEngineConfig.from_mapping(config)
        assert e.value.violations[0].field == field
    assert TorchEngineConfig.from_mapping({"max_num_seqs": 8}).max_num_seqs == 8


def test_the_eos_token_of_the_tokenizer_is_known(llama_dir: Path) -> None:
    loaded = load_model(llama_dir, TorchEngineConfig())
    assert loaded.tokenizer.token_to_id(EOS) == 0 and 0 in loaded.eos_ids


def test_shutting_down_ends_open_streams_with_unavailable(llama_dir: Path) -> None:
    from pylon_services.common.errors import Unavailable

    engine = engine_for(llama_dir)

    async def main() -> None:
        stream = engine.generate(EngineRequest("s", prompt_token_ids=(1, 2, 3), sampling=greedy(400)))
        await stream.__anext__()
        await engine.shutdown()
        with pytest.raises(Unavailable, match="shut down"):
            async for _ in stream:
                pass

    asyncio.run(asyncio.wait_for(main(), 60))
