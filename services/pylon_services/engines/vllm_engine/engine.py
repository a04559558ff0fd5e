"""``VllmEngine``: the engine port (``engines/contract.py``) on vLLM's async engine (``AsyncLLM``).

vLLM is imported only inside ``load_vllm_engine`` and the functions it calls, so importing this
module (or Pylon) never needs vLLM. Requests reach vLLM as token ids (tokenized here with vLLM's
own tokenizer, so ``check_request`` measures exactly what vLLM will run) with ``output_kind=DELTA``,
and each vLLM output becomes one ``RequestOutput`` of per-completion deltas.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from pylon_services.common.errors import AlreadyExists, Unavailable
from pylon_services.engines.contract import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    CompletionDelta,
    EngineInfo,
    EngineRequest,
    EngineStats,
    RequestOutput,
    SamplingOptions,
    TokenLogprob,
    invalid,
    length_violations,
    request_violations,
)
from pylon_services.engines.vllm_engine.config import engine_arguments
from pylon_services.engines.vllm_engine.stats import StatsSink, stat_logger_factory

log = logging.getLogger(__name__)

# vLLM's finish reasons that are not the port's three: a request vLLM failed counts as aborted.
_FINISH = {"length": FINISH_LENGTH, "stop": FINISH_STOP, "abort": FINISH_ABORT, "error": FINISH_ABORT}


def load_vllm_engine(model_dir: str, config: Mapping[str, Any]) -> VllmEngine:
    """Start vLLM's engine on the Hugging Face model directory ``model_dir``.

    ``config`` is the deployment's ``engine_config`` (keys in ``config.CONFIG_KEYS``); an unknown
    key or a bad value raises ``InvalidArgument`` naming ``engine_config.<key>`` before vLLM loads.
    Blocks while vLLM loads the model and sizes its KV cache (a minute or more on a CPU).
    """
    kwargs = engine_arguments(model_dir, config)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    sink = StatsSink()
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), stat_loggers=[stat_logger_factory(sink)])
    sink.kv_blocks_total = llm.vllm_config.cache_config.num_gpu_blocks or 0
    engine = VllmEngine(llm, sink)
    # A traceback that vLLM's lazy imports keep holds this frame: without the del, its local would
    # keep the AsyncLLM alive after shutdown, to be finalized at interpreter exit (and fail there).
    del llm
    return engine


class VllmEngine:
    """The engine port on one ``AsyncLLM`` (implements ``contract.InferenceEngine``)."""

    def __init__(self, llm: Any, sink: StatsSink) -> None:
        self._llm = llm
        self._sink = sink
        self._tokenizer = llm.get_tokenizer()
        self._active: set[str] = set()
        model_config = llm.vllm_config.model_config
        self._vocab_size: int = model_config.get_vocab_size()
        device = llm.vllm_config.device_config.device_type
        self.info = EngineInfo(
            engine="vllm",
            architecture=(model_config.architectures or ["unknown"])[0],
            device="cpu" if device == "cpu" else f"{device}:0",
            max_model_len=model_config.max_model_len,
            max_num_seqs=llm.vllm_config.scheduler_config.max_num_seqs,
        )

    def check_request(self, request: EngineRequest) -> int:
        """The prompt's length in tokens (vLLM's tokenizer); ``InvalidArgument`` naming the field."""
        return len(self._prompt_ids(request))

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        ids = self._prompt_ids(request)
        llm = self._running()
        if request.request_id in self._active:
            raise AlreadyExists(f"request {request.request_id!r} is already running")
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        params = sampling_params(request.sampling, self.info.max_model_len - len(ids))
        # Already tokenized and checked: vLLM takes the ids as they are, without re-rendering.
        prompt = tokens_input(list(ids), prompt=request.prompt or None)
        stream = llm.generate(prompt, params, request.request_id)
        generated = [0] * request.sampling.n
        self._active.add(request.request_id)
        try:
            async for out in stream:
                yield convert_output(request.request_id, out, len(ids), generated, request.sampling.logprobs or 0)
        except EngineDeadError as err:
            raise Unavailable(f"the vLLM engine died: {err}") from err
        finally:
            # Leaving early (aclose, cancellation) closes vLLM's stream, which aborts the request.
            await stream.aclose()
            self._active.discard(request.request_id)

    async def abort(self, request_id: str) -> bool:
        if request_id not in self._active:
            return False
        await self._running().abort(request_id)
        return True

    def stats(self) -> EngineStats:
        return self._sink.snapshot()

    async def check_health(self) -> None:
        llm = self._running()
        try:
            await llm.check_health()
        except Exception as err:  # noqa: BLE001 - any error from a dead engine means the same
            raise Unavailable(f"the vLLM engine can no longer serve: {err}") from err

    async def shutdown(self) -> None:
        """Stop vLLM's engine process; the engine then refuses everything with ``Unavailable``."""
        llm, self._llm = self._llm, None
        if llm is not None:
            # Dropping the last reference here also runs AsyncLLM.__del__ (a second, harmless
            # shutdown) now, not at interpreter exit when the modules it calls are gone.
            llm.shutdown()

    def _running(self) -> Any:
        if self._llm is None:
            raise Unavailable("the vLLM engine is shut down")
        return self._llm

    def _prompt_ids(self, request: EngineRequest) -> Sequence[int]:
        """The prompt as vLLM will run it; raises ``InvalidArgument`` naming the field."""
        bad = request_violations(request, vocab_size=self._vocab_size)
        if bad:
            raise invalid(bad)
        ids = request.prompt_token_ids or self._tokenizer.encode(request.prompt)
        bad = length_violations(len(ids), request.sampling.max_tokens, self.info.max_model_len)
        if bad:
            raise invalid(bad)
        return ids


def sampling_params(s: SamplingOptions, room: int) -> Any:
    """vLLM's ``SamplingParams`` for ``s``; ``room`` is what the context leaves after the prompt."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return SamplingParams(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,  # 0 is vLLM's "off" too
        min_p=s.min_p,
        repetition_penalty=s.repetition_penalty,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        stop=list(s.stop) or None,
        stop_token_ids=list(s.stop_token_ids) or None,
        ignore_eos=s.ignore_eos,
        seed=s.seed,
        logprobs=s.logprobs,
        max_tokens=s.max_tokens if s.max_tokens is not None else room,
        output_kind=RequestOutputKind.DELTA,
    )


def convert_output(request_id: str, out: Any, prompt_tokens: int, generated: list[int], top_k: int) -> RequestOutput:
    """One vLLM ``RequestOutput`` (DELTA kind) as the port's; ``generated`` counts each
    completion's tokens so far and is updated here; ``top_k`` is the request's ``logprobs``."""
    deltas = []
    for c in out.outputs:
        token_ids = tuple(c.token_ids)
        generated[c.index] += len(token_ids)
        deltas.append(CompletionDelta(
            index=c.index,
            text=c.text,
            token_ids=token_ids,
            logprobs=_logprobs(token_ids, c.logprobs, top_k),
            finish_reason=_FINISH.get(c.finish_reason, FINISH_STOP) if c.finish_reason else None,
        ))
    return RequestOutput(
        request_id=request_id,
        deltas=tuple(deltas),
        prompt_tokens=prompt_tokens,
        completion_tokens=sum(generated),
        cached_tokens=out.num_cached_tokens or 0,
        finished=out.finished,
    )


def _logprobs(token_ids: Sequence[int], positions: Any, k: int) -> tuple[TokenLogprob, ...]:
    """vLLM's per-position ``{token id: Logprob}``: the sampled token (whatever its rank) plus the
    ``k`` most likely, ranked from 1."""
    if not positions:
        return ()
    result = []
    for token_id, alternatives in zip(token_ids, positions, strict=True):
        top = sorted((lp.rank, t, lp.logprob) for t, lp in alternatives.items()
                     if lp.rank is not None and lp.rank <= k)
        result.append(TokenLogprob(token_id, alternatives[token_id].logprob, tuple((t, lp) for _, t, lp in top)))
    return tuple(result)


