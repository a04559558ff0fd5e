"""The replica server (engines/replica.py) over a real torch engine and a real gRPC server with
the platform's internal key: streaming, n completions, logprobs, cached tokens, Abort,
GetStats, the bounded queue, cancellation, draining and the vLLM-named metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import start_http_server

from pylon.engine.v1 import engine_pb2 as pb
from pylon.engine.v1 import engine_pb2_grpc
from pylon_services.engines.metrics import EngineMetrics
from pylon_services.engines.queue_limits import QueueLimits
from pylon_services.engines.replica import EngineServicer, load_engine
from pylon_services.runtime.internal_auth import EngineStub, RequireInternalKey
from tests.support.hf_models import build_model_dir

KEY = "pyl_internal_test-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_model_dir(tmp_path_factory.mktemp("model"), "llama")


class Replica:
    def __init__(self, servicer: EngineServicer, server: grpc.aio.Server, address: str, metrics_url: str) -> None:
        self.servicer, self.server, self.address, self.metrics_url = servicer, server, address, metrics_url
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = EngineStub(self.channel, KEY)


async def start(model_dir: Path, limits: QueueLimits = QueueLimits(), **config: Any) -> Replica:
    engine = load_engine("torch", str(model_dir), {"block_size": 4, **config})
    metrics = EngineMetrics(engine.stats, "tenants/acme/models/m/versions/1")
    httpd, _ = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    servicer = EngineServicer(engine, "tenants/acme/models/m/versions/1", limits, metrics)
    server = grpc.aio.server(interceptors=[RequireInternalKey(KEY)])
    engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Replica(servicer, server, f"127.0.0.1:{port}", f"http://127.0.0.1:{httpd.server_port}/metrics")


@pytest.fixture
async def replica(model_dir: Path) -> AsyncIterator[Replica]:
    r = await start(model_dir)
    yield r
    await r.channel.close()
    await r.server.stop(0)
    await r.servicer.engine.shutdown()


def greedy(tokens: int, **kw: Any) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, **kw)


async def test_calls_without_the_internal_key_are_refused(replica: Replica) -> None:
    async with grpc.aio.insecure_channel(replica.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await engine_pb2_grpc.EngineServiceStub(channel).GetStats(pb.GetStatsRequest())
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_text_and_token_prompts_stream_the_same_completion_with_usage(replica: Replica, model_dir: Path) -> None:
    from tokenizers import Tokenizer

    prompt = "The quick brown fox"
    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(prompt).ids
    by_text = [r async for r in replica.stub.Generate(pb.GenerateRequest(prompt=prompt, sampling=greedy(8)))]
    by_ids = [r async for r in replica.stub.Generate(pb.GenerateRequest(prompt_token_ids=ids, sampling=greedy(8)))]
    assert [t for r in by_text for t in r.token_ids] == [t for r in by_ids for t in r.token_ids]
    assert len([t for r in by_text for t in r.token_ids]) == 8
    last = by_ids[-1]
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(ids), 8)
    assert last.usage.cached_tokens == (len(ids) - 1) // 4 * 4  # the text request left its blocks cached


async def test_n_completions_come_with_their_index_and_logprobs(replica: Replica) -> None:
    responses = [r async for r in replica.stub.Generate(pb.GenerateRequest(
        prompt_token_ids=[5, 6, 7, 8, 9], sampling=pb.SamplingParams(max_tokens=4, temperature=1.0, n=2, seed=1,
                                                                     ignore_eos=True, logprobs=3)))]
    assert {r.index for r in responses} == {0, 1}
    for index in (0, 1):
        mine = [r for r in responses if r.index == index]
        assert sum(len(r.token_ids) for r in mine) == 4 == sum(len(r.logprobs) for r in mine)
        assert all(len(lp.top) == 3 for r in mine for lp in r.logprobs)
        assert mine[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert responses[-1].usage.completion_tokens == 8


async def test_bad_requests_name_the_field(replica: Replica) -> None:
    for request, field in ((pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p"),
                           (pb.GenerateRequest(sampling=greedy(4)), "prompt"),
                           (pb.GenerateRequest(prompt="hi", prompt_token_ids=[1], sampling=greedy(4)), "prompt"),
                           (pb.GenerateRequest(prompt="hi", sampling=greedy(4, n=50)), "sampling.n"),
                           (pb.GenerateRequest(prompt_token_ids=[5] * 600, sampling=greedy(4)), "prompt"),
                           (pb.GenerateRequest(prompt="hi", request_id="a b", sampling=greedy(4)), "request_id")):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            [r async for r in replica.stub.Generate(request)]
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in e.value.details(), (field, e.value.details())


async def test_abort_and_a_client_that_leaves_free_the_blocks(replica: Replica) -> None:
    call = replica.stub.Generate(pb.GenerateRequest(request_id="long-1", prompt_token_ids=[1, 2, 3],
                                                    sampling=greedy(400)))
    await call.read()
    assert (await replica.stub.Abort(pb.AbortRequest(request_id="long-1"))).found
    rest = await rest_of(call)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
    assert not (await replica.stub.Abort(pb.AbortRequest(request_id="long-1"))).found
    gone = replica.stub.Generate(pb.GenerateRequest(prompt_token_ids=[1, 2, 3], sampling=greedy(400)))
    await gone.read()
    assert (await replica.stub.GetStats(pb.GetStatsRequest())).running == 1
    gone.cancel()  # the client went away mid-stream
    await wait_stats(replica, lambda s: s.running == 0 and s.kv_blocks_used == 0)


async def rest_of(call: Any) -> list[pb.GenerateResponse]:
    """The pieces left on a stream begun with ``read()`` (grpc.aio forbids iterating it then)."""
    out = []
    while (piece := await call.read()) is not grpc.aio.EOF:
        out.append(piece)
    return out


async def wait_stats(replica: Replica, ok: Any, timeout_s: float = 10) -> pb.GetStatsResponse:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        stats = await replica.stub.GetStats(pb.GetStatsRequest())
        if ok(stats) or loop.time() > deadline:
            assert ok(stats), stats
            return stats
        await asyncio.sleep(0.02)


async def test_a_full_queue_answers_resource_exhausted_with_a_retry_delay(model_dir: Path) -> None:
    # One sequence runs at a time; one more may wait; the third is refused until the queue drains.
    r = await start(model_dir, QueueLimits(max_queued_requests=1), max_num_seqs=1)
    try:
        first = r.stub.Generate(pb.GenerateRequest(prompt_token_ids=[1, 2], sampling=greedy(200)))
        await first.read()
        second = r.stub.Generate(pb.GenerateRequest(prompt_token_ids=[3, 4], sampling=greedy(2)))
        await wait_stats(r, lambda s: s.queued_requests == 1 and s.waiting == 1)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            [x async for x in r.stub.Generate(pb.GenerateRequest(prompt_token_ids=[5], sampling=greedy(2)))]
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(e.value)
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert retry, status
        first.cancel()
        assert len([t async for x in second for t in x.token_ids]) == 2  # it ran once the first left
    finally:
        await r.channel.close()
        await r.server.stop(0)
        await r.servicer.engine.shutdown()


async def test_draining_refuses_new_calls_and_lets_running_streams_finish(replica: Replica) -> None:
    running = replica.stub.Generate(pb.GenerateRequest(prompt_token_ids=[1, 2], sampling=greedy(30)))
    await running.read()
    drained = asyncio.create_task(replica.servicer.drain(30))
    await asyncio.sleep(0.05)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        [x async for x in replica.stub.Generate(pb.GenerateRequest(prompt="hi", sampling=greedy(2)))]
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = await rest_of(running)
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH  # finished, not cut off
    await drained
    assert (await replica.stub.GetStats(pb.GetStatsRequest())).draining


async def test_a_drain_past_its_grace_aborts_what_is_left(replica: Replica) -> None:
    running = replica.stub.Generate(pb.GenerateRequest(prompt_token_ids=[1, 2], sampling=greedy(400)))
    await running.read()
    await replica.servicer.drain(0.2)
    rest = await rest_of(running)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED


async def test_metrics_carry_vllm_names(replica: Replica) -> None:
    [r async for r in replica.stub.Generate(pb.GenerateRequest(prompt_token_ids=list(range(10, 30)),
                                                               sampling=greedy(5)))]
    [r async for r in replica.stub.Generate(pb.GenerateRequest(prompt_token_ids=list(range(10, 30)),
                                                               sampling=greedy(5)))]
    body = (await asyncio.to_thread(lambda: urllib.request.urlopen(replica.metrics_url, timeout=5).read())).decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
                 'vllm:request_success_total{finished_reason="length"'):
        assert name in body, name
    assert 'vllm:prefix_cache_hits_total{model_name="tenants/acme/models/m/versions/1"} 16.0' in body
    assert 'vllm:generation_tokens_total{model_name="tenants/acme/models/m/versions/1"} 10.0' in body


async def test_engine_info_names_the_model_and_its_limits(replica: Replica) -> None:
    info = await replica.stub.GetEngineInfo(pb.GetEngineInfoRequest())
    assert (info.engine, info.architecture, info.device) == ("torch", "LlamaForCausalLM", "cpu")
    assert info.max_model_len == 512 and info.max_batch_size == 64
