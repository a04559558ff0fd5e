"""An engine replica: one registered model version in one engine (torch or vLLM, both behind the
``InferenceEngine`` port), served over the internal ``EngineService``.

Runs inside a Ray worker as a long-lived scheduler job (the ``torch`` and ``vllm`` engine
workloads). Lifecycle:

1. Download the pinned version and load it; a model the engine cannot serve (a missing
   tokenizer, an unknown architecture, vLLM absent on the worker) raises, so the job fails with
   that reason and the deployment turns FAILED.
2. Warm up with one short request, then serve: gRPC with the platform's internal key, health
   SERVING, Prometheus metrics under vLLM's names on a port of its own.
3. Heartbeat into Redis (``pylon:replicas:{tenant}:{deployment}``) every ``HEARTBEAT_S`` with the
   engine's stats; the gateway routes to fresh registrations only.
4. On the job's stop or preempt flag, or SIGTERM: stop admitting (UNAVAILABLE, health
   NOT_SERVING, registration removed), let running streams finish within the grace period, abort
   what is left, exit (75 when preempted, so the scheduler requeues the replica).

Admission is bounded: beyond ``max_queued_requests`` requests, or ``max_queued_tokens`` prompt
tokens, admitted but without a first token, Generate answers RESOURCE_EXHAUSTED with a retry
delay (vLLM's ``--max-num-queued-reqs`` / ``--max-num-queued-tokens``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from pylon.engine.v1 import engine_pb2 as pb
from pylon.engine.v1 import engine_pb2_grpc
from pylon_services.common.errors import FieldViolation, PylonError, ResourceExhausted, Unavailable
from pylon_services.common.layout import read_model_version
from pylon_services.common.limits import check_request_id
from pylon_services.engines import wire
from pylon_services.engines.contract import EngineRequest, InferenceEngine, SamplingOptions, invalid
from pylon_services.engines.metrics import EngineMetrics
from pylon_services.engines.queue_limits import QueueLimits
from pylon_services.engines.registration import HEARTBEAT_S, replicas_key
from pylon_services.runtime.errors import to_status
from pylon_services.runtime.internal_auth import RequireInternalKey
from pylon_services.runtime.loop import run as run_loop
from pylon_services.storage.base import ObjectStore
from pylon_services.workloads.contract import PREEMPTED_EXIT_CODE, WorkloadContext, WorkloadResult

log = logging.getLogger("pylon.engine")
SERVED_FORMATS = ("hf_transformers", "unspecified")
STOP_GRACE_S = 1.5  # a cancelled replica's task is killed 2 s after the stop (scheduler/worker/launcher.py)


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    """EngineService over any ``InferenceEngine``."""

    def __init__(self, engine: InferenceEngine, model_version: str, limits: QueueLimits,
                 metrics: EngineMetrics) -> None:
        self.engine, self.model_version, self.limits, self.metrics = engine, model_version, limits, metrics
        self.draining = False
        self.queued: dict[str, int] = {}  # admitted, no first token yet: request id -> prompt tokens
        self.in_flight: dict[str, asyncio.Task[Any]] = {}

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        request_id = request.request_id or uuid.uuid4().hex
        try:
            req = self._admit(request, request_id)
        except PylonError as e:
            await context.abort_with_status(to_status(e, request_id))
        task = asyncio.current_task()
        assert task is not None
        self.in_flight[request_id] = task
        try:
            async for response in self._stream(req):
                yield response
        except PylonError as e:
            await context.abort_with_status(to_status(e, request_id))
        finally:
            self.queued.pop(request_id, None)
            self.in_flight.pop(request_id, None)

    def _admit(self, request: Any, request_id: str) -> EngineRequest:
        if self.draining:
            raise Unavailable("this replica is draining; retry on another")
        check_request_id("request_id", request.request_id)
        req = wire.engine_request(request, request_id)
        prompt_len = self.engine.check_request(req)
        if request_id in self.queued or request_id in self.in_flight:
            raise invalid([FieldViolation("request_id", f"{request_id!r} is already running on this replica")])
        queued_tokens = sum(self.queued.values())
        if (len(self.queued) >= self.limits.max_queued_requests
                or (self.queued and queued_tokens + prompt_len > self.limits.max_queued_tokens)):
            raise ResourceExhausted(f"the replica's queue is full ({len(self.queued)} requests, {queued_tokens} "
                                    "prompt tokens waiting); retry later", retry_after_s=self.limits.retry_after_s)
        self.queued[request_id] = prompt_len
        return req

    async def _stream(self, req: EngineRequest) -> AsyncIterator[Any]:
        start = last = time.monotonic()
        first = True
        reasons: list[str] = []
        async for out in self.engine.generate(req):
            now = time.monotonic()
            if any(d.token_ids for d in out.deltas):
                if first:
                    self.queued.pop(req.request_id, None)
                    self.metrics.ttft.observe(now - start)
                    first = False
                else:
                    self.metrics.itl.observe(now - last)
                last = now
            reasons += [d.finish_reason for d in out.deltas if d.finish_reason]
            for response in wire.responses(out):
                yield response
        self.metrics.e2e.observe(time.monotonic() - start)
        for reason in reasons:
            self.metrics.finished(reason)

    async def Abort(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.AbortResponse(found=await self.engine.abort(request.request_id))

    async def GetStats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return wire.stats_response(self.engine.stats(), queued_requests=len(self.queued),
                                   queued_prompt_tokens=sum(self.queued.values()), draining=self.draining)

    async def GetEngineInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        info, stats = self.engine.info, self.engine.stats()
        return pb.GetEngineInfoResponse(model_version=self.model_version, engine=info.engine, device=info.device,
                                        running_requests=stats.running, waiting_requests=stats.waiting,
                                        max_batch_size=info.max_num_seqs, architecture=info.architecture,
                                        max_model_len=info.max_model_len)

    async def drain(self, grace_s: float) -> None:
        """Stop admitting; give running streams ``grace_s`` to finish, then abort the rest."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for request_id in list(self.in_flight):
            await self.engine.abort(request_id)
        while self.in_flight and time.monotonic() < deadline + 2:
            await asyncio.sleep(0.05)


def load_engine(engine: str, directory: str, config: Mapping[str, Any]) -> InferenceEngine:
    """The named engine serving the model directory; ValueError or RuntimeError saying why not."""
    if engine == "torch":
        from pylon_services.engines.torch_engine.engine import TorchEngine
        from pylon_services.engines.torch_engine.model import load_model
        from pylon_services.engines.torch_engine.settings import TorchEngineConfig

        cfg = TorchEngineConfig.from_mapping(config)
        return TorchEngine(load_model(directory, cfg), cfg)
    if engine == "vllm":
        try:
            from pylon_services.engines.vllm_engine import load_vllm_engine

            return load_vllm_engine(directory, config)
        except ImportError as exc:
            raise RuntimeError("the vllm engine needs vLLM on the worker: vLLM 0.32 in the worker's environment "
                               "with pylon-services installed beside it without its dependencies "
                               f"(scripts/vllm_venv.sh; docs/design/engine.md): {exc}") from None
    raise ValueError(f"unknown engine {engine!r}")


def download_version(store: ObjectStore, tenant: str, model_version: str, directory: Path) -> None:
    """Download a model version (``tenants/{t}/models/{m}/versions/{n}``) that an engine serves."""
    _, t, _, model, _, n = model_version.split("/")
    if t != tenant:
        raise ValueError(f"{model_version} is not in tenant {tenant}")
    version = read_model_version(store, tenant, model, int(n))  # the pinned, immutable manifest
    fmt = version.get("format", "unspecified")
    if fmt not in SERVED_FORMATS:
        raise ValueError(f"engines serve Hugging Face model directories; {model_version} is in format {fmt!r}")
    root = directory.resolve()
    for f in version["files"]:
        target = (root / f["path"]).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"model file path {f['path']!r} leaves the model directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(f["object_key"], str(target))


async def warm_up(engine: InferenceEngine) -> None:
    """One short request through the whole path, so the first user's request pays no first-call costs."""
    request = EngineRequest("pylon-warmup", prompt_token_ids=(0, 0), sampling=SamplingOptions(
        max_tokens=2, temperature=0.0, ignore_eos=True))
    async for _ in engine.generate(request):
        pass


async def _serve(ctx: WorkloadContext) -> WorkloadResult:
    import ray

    spec = ctx.workload
    tenant, deployment_id = ctx.tenant, spec["deployment"].rsplit("/", 1)[1]
    config = dict(spec.get("engine_config") or {})
    limits = QueueLimits.pop_from(config)
    directory = Path(tempfile.mkdtemp(prefix="pylon-model-"))
    try:
        await asyncio.to_thread(download_version, ctx.store, tenant, spec["model_version"], directory)
        try:
            engine = await asyncio.to_thread(load_engine, spec.get("engine") or "torch", str(directory), config)
        except ValueError as exc:  # a model or setting this engine cannot serve: a retry fails the same way
            ctx.log(f"engine failed to start: {exc}")
            return WorkloadResult(exit_code=1, error=str(exc), retryable=False)
        try:
            await warm_up(engine)
            return await _serve_engine(ctx, engine, limits, tenant, deployment_id, ray.util.get_node_ip_address())
        finally:
            await engine.shutdown()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _serve_engine(ctx: WorkloadContext, engine: InferenceEngine, limits: QueueLimits, tenant: str,
                        deployment_id: str, host: str) -> WorkloadResult:
    model_version = ctx.workload["model_version"]
    metrics = EngineMetrics(engine.stats, model_version)
    httpd, _ = start_http_server(0, addr=host, registry=metrics.registry)
    servicer = EngineServicer(engine, model_version, limits, metrics)
    # Its port is reachable from user code on this node: only the platform's key gets in.
    server = grpc.aio.server(interceptors=[RequireInternalKey(ctx.settings.internal_key)])
    engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    address, metrics_address = f"{host}:{port}", f"{host}:{httpd.server_port}"
    info = engine.info
    ctx.log(f"engine {info.engine} serving {model_version} ({info.architecture}, context {info.max_model_len}) at "
            f"{address} on {info.device}; metrics at http://{metrics_address}/metrics")
    sigterm = asyncio.Event()
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # only a main thread can
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, sigterm.set)
    redis = aioredis.from_url(ctx.settings.redis_url)
    key = replicas_key(tenant, deployment_id)
    try:
        while not (ctx.stop_requested() or sigterm.is_set()):
            s = engine.stats()
            await redis.hset(key, ctx.job_id, json.dumps({
                "address": address, "ts": time.time(), "running": s.running + s.waiting, "waiting": s.waiting,
                "kv_cache_usage": s.kv_usage, "engine": info.engine, "metrics_address": metrics_address}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sigterm.wait(), HEARTBEAT_S)
        preempted = ctx.preempt_requested()
        grace = float(getattr(ctx, "preempt_grace_s", 0) or 30.0) - 2 if preempted or sigterm.is_set() else STOP_GRACE_S
        await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await redis.hdel(key, ctx.job_id)
        ctx.log(f"engine draining: {len(servicer.in_flight)} streams, up to {max(grace, 0):g}s")
        await servicer.drain(max(grace, 0.0))
        return WorkloadResult(exit_code=PREEMPTED_EXIT_CODE if preempted else 0)
    finally:
        with contextlib.suppress(Exception):
            await redis.hdel(key, ctx.job_id)
        await redis.aclose()
        await server.stop(1)
        httpd.shutdown()


def run(ctx: WorkloadContext) -> WorkloadResult:
    """Serve until the job is stopped or preempted (or the worker gets SIGTERM)."""
    return run_loop(_serve(ctx))
