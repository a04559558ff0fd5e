"""``pylon.engine.v1`` messages to and from the engine port's types (used by the replica server
and by the gateway, which checks a request by the same rules before relaying it)."""

from __future__ import annotations

from pylon.engine.v1 import engine_pb2 as pb
from pylon_services.engines.contract import EngineRequest, EngineStats, RequestOutput, SamplingOptions

_FINISH = {"length": pb.FINISH_REASON_LENGTH, "stop": pb.FINISH_REASON_STOP, "abort": pb.FINISH_REASON_ABORTED}


def sampling_options(p: pb.SamplingParams, default_max_tokens: int | None = None) -> SamplingOptions:
    """The port's options for wire params (zero means the default where the proto says so)."""
    return SamplingOptions(
        max_tokens=p.max_tokens or default_max_tokens, temperature=p.temperature, top_p=p.top_p or 1.0,
        top_k=p.top_k, min_p=p.min_p, repetition_penalty=p.repetition_penalty or 1.0,
        presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty, stop=tuple(p.stop),
        stop_token_ids=tuple(p.stop_token_ids), ignore_eos=p.ignore_eos,
        seed=p.seed if p.HasField("seed") else None, n=p.n or 1,
        logprobs=p.logprobs if p.HasField("logprobs") else None)


def engine_request(r: pb.GenerateRequest, request_id: str, default_max_tokens: int | None = None) -> EngineRequest:
    return EngineRequest(request_id, r.prompt, tuple(r.prompt_token_ids),
                         sampling_options(r.sampling, default_max_tokens))


def responses(out: RequestOutput) -> list[pb.GenerateResponse]:
    """One wire response per completion delta; each carries the request's usage so far."""
    usage = pb.Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                     cached_tokens=out.cached_tokens)
    return [pb.GenerateResponse(
        text=d.text, token_ids=d.token_ids, index=d.index, usage=usage,
        finish_reason=_FINISH.get(d.finish_reason or "", pb.FINISH_REASON_UNSPECIFIED),
        logprobs=[pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                                  top=[pb.TopLogprob(token_id=t, logprob=v) for t, v in lp.top])
                  for lp in d.logprobs]) for d in out.deltas]


def stats_response(s: EngineStats, *, queued_requests: int, queued_prompt_tokens: int,
                   draining: bool) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(
        waiting=s.waiting, running=s.running, kv_blocks_used=s.kv_blocks_used, kv_blocks_total=s.kv_blocks_total,
        kv_cache_usage=s.kv_usage, prefix_cache_queries=s.prefix_cache_queries, prefix_cache_hits=s.prefix_cache_hits,
        prefix_cache_hit_rate=s.prefix_cache_hit_rate, prompt_tokens=s.prompt_tokens,
        generation_tokens=s.generation_tokens, preemptions=s.preemptions, tokens_per_s=s.tokens_per_s,
        queued_requests=queued_requests, queued_prompt_tokens=queued_prompt_tokens, draining=draining)
