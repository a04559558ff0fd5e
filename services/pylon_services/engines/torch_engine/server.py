"""An engine replica: loads a registered model version and serves EngineService.Generate.

The version's format picks the runner: ``pylon_gpt`` is the tiny GPT (``ModelRunner``),
``hf_transformers`` a Hugging Face Llama directory (``HfRunner``; a tiny-GPT checkpoint
registered under that format or none still gets ``ModelRunner``, by its config.json); any other
format, or an architecture neither serves, fails the replica job with an error saying why.

Runs inside a Ray worker as a long-lived scheduler job. It registers its address in Redis
(``pylon:replicas:{tenant}:{deployment}``) with a heartbeat; the gateway routes to fresh
registrations only, so a dead replica drops out within a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pylon.engine.v1 import engine_pb2 as pb
from pylon.engine.v1 import engine_pb2_grpc
from pylon_services.common.layout import read_model_version
from pylon_services.engines.registration import HEARTBEAT_S, replicas_key
from pylon_services.engines.torch_engine.hf_runner import HfRunner
from pylon_services.engines.torch_engine.runner import ModelRunner, Runner
from pylon_services.ml.checkpoint import MODEL_TYPE as TINY_GPT_MODEL_TYPE
from pylon_services.runtime.internal_auth import RequireInternalKey
from pylon_services.runtime.loop import run as run_loop
from pylon_services.storage.base import ObjectStore
from pylon_services.workloads.contract import WorkloadContext, WorkloadResult

log = logging.getLogger("pylon.engine")
_FINISH: dict[str, pb.FinishReason] = {"length": pb.FINISH_REASON_LENGTH, "stop": pb.FINISH_REASON_STOP}


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    """Serves one model. Requests are decoded one token at a time in a worker thread; a lock
    keeps one forward pass on the CPU at a time (continuous batching comes with the gateway work)."""

    def __init__(self, runner: Runner, model_version: str) -> None:
        self.runner = runner
        self.model_version = model_version
        self.running = 0
        self.waiting = 0
        self._lock = threading.Lock()

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        s = request.sampling
        if not request.prompt:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt: must not be empty")
        try:
            pieces = self.runner.generate(
                request.prompt, max_tokens=s.max_tokens or 64, temperature=s.temperature,
                top_k=s.top_k, top_p=s.top_p or 1.0, seed=s.seed if s.HasField("seed") else None, stop=list(s.stop))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.waiting += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            with self._lock:
                self.waiting -= 1
                self.running += 1
                try:
                    for piece in pieces:
                        loop.call_soon_threadsafe(queue.put_nowait, piece)
                        if cancelled.is_set():
                            break
                except Exception as exc:  # noqa: BLE001 - surfaced to the caller below
                    loop.call_soon_threadsafe(queue.put_nowait, exc)
                finally:
                    self.running -= 1
                    loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=produce, daemon=True).start()
        try:
            while (piece := await queue.get()) is not None:
                if isinstance(piece, Exception):
                    await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {piece}")
                finish = _FINISH.get(piece.finish_reason or "", pb.FINISH_REASON_UNSPECIFIED)
                yield pb.GenerateResponse(
                    text=piece.text, token_ids=piece.token_ids, finish_reason=finish,
                    usage=pb.Usage(prompt_tokens=piece.prompt_tokens, completion_tokens=piece.completion_tokens))
        finally:
            cancelled.set()

    async def GetEngineInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.GetEngineInfoResponse(model_version=self.model_version, engine="torch", device=str(self.runner.device),
                                        running_requests=self.running, waiting_requests=self.waiting, max_batch_size=1)


SERVED_FORMATS = ("pylon_gpt", "hf_transformers")


def load_runner(store: ObjectStore, tenant: str, model_version: str) -> Runner:
    """The runner for a model version (``tenants/{t}/models/{m}/versions/{n}``), by its format.

    ValueError when the version's format or architecture is not one this engine serves.
    """
    _, t, _, model, _, n = model_version.split("/")
    if t != tenant:
        raise ValueError(f"{model_version} is not in tenant {tenant}")
    version = read_model_version(store, tenant, model, int(n))  # the pinned, immutable manifest
    fmt = version.get("format", "unspecified")
    if fmt == "pylon_gpt":
        return ModelRunner.from_files({f["path"]: store.get(f["object_key"]) for f in version["files"]})
    if fmt not in ("hf_transformers", "unspecified"):  # unspecified: config.json says what it is
        raise ValueError(f"the torch engine cannot serve {model_version}: its format is {fmt!r}; "
                         f"it serves {', '.join(SERVED_FORMATS)}")
    with tempfile.TemporaryDirectory(prefix="pylon-model-") as directory:
        download_files(store, version["files"], Path(directory))
        if _model_type(Path(directory)) == TINY_GPT_MODEL_TYPE:
            # A tiny-GPT checkpoint also holds config.json + model.safetensors, so registering
            # its directory without a format detects hf_transformers; it is still the tiny GPT.
            return ModelRunner.from_files({p: (Path(directory) / p).read_bytes()
                                           for p in (f["path"] for f in version["files"])})
        # The weights are copied into the model, so the directory can go once it is loaded.
        return HfRunner.from_directory(directory)


def download_files(store: ObjectStore, files: list[dict[str, Any]], directory: Path) -> None:
    """Download a version's files under ``directory`` at their relative paths."""
    root = directory.resolve()
    for f in files:
        target = (root / f["path"]).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"model file path {f['path']!r} leaves the model directory")
        store.get_file(f["object_key"], str(target))


def _model_type(directory: Path) -> object:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None  # HfRunner reports a missing or broken config.json
    return config.get("model_type") if isinstance(config, dict) else None


async def _serve(ctx: WorkloadContext) -> None:
    import ray

    engine = ctx.workload
    tenant, deployment_id = ctx.tenant, engine["deployment"].rsplit("/", 1)[1]
    runner = await asyncio.to_thread(load_runner, ctx.store, tenant, engine["model_version"])
    servicer = EngineServicer(runner, engine["model_version"])
    # Its port is reachable from user code on this node: only the platform's key gets in.
    server = grpc.aio.server(interceptors=[RequireInternalKey(ctx.settings.internal_key)])
    engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host = ray.util.get_node_ip_address()
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{port}"
    ctx.log(f"engine serving {engine['model_version']} ({runner.architecture}) at {address} on {runner.device}")
    redis = aioredis.from_url(ctx.settings.redis_url)
    key = replicas_key(tenant, deployment_id)
    try:
        while True:
            await redis.hset(key, ctx.job_id, json.dumps({"address": address, "ts": time.time(),
                                                         "running": servicer.running + servicer.waiting}))
            await asyncio.sleep(HEARTBEAT_S)
    finally:
        await redis.hdel(key, ctx.job_id)
        await server.stop(5)


def run(ctx: WorkloadContext) -> WorkloadResult:
    """Serve until the scheduler cancels the job (which kills this worker)."""
    run_loop(_serve(ctx))
    return WorkloadResult()
