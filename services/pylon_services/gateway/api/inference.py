"""Serving a request, whatever transport it came by: which deployment it names, the prompt of a
chat, and the relay of an engine replica's stream. The gRPC servicer and the OpenAI-compatible
HTTP server both call this, so both resolve, check and route requests the same way.

The caller's identity and request id are the per-call context (``runtime/context.py``): the
gRPC interceptor sets them, and the HTTP server sets them the same way after authenticating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass

import grpc

from pylon.engine.v1 import engine_pb2
from pylon.registry.v1 import registry_pb2
from pylon_services.common.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from pylon_services.common.names import MODEL_URI_RE, MODEL_URI_RULE
from pylon_services.engines import wire
from pylon_services.engines.contract import sampling_violations as engine_sampling_violations
from pylon_services.gateway.api import inputs
from pylon_services.gateway.api.chat_models import ChatModels
from pylon_services.gateway.api.serving import ServingHooks
from pylon_services.gateway.domain import chat, requests
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords
from pylon_services.gateway.domain.routing import ReplicaView, pick_replica
from pylon_services.runtime.context import forward_metadata, principal
from pylon_services.runtime.peers import PlatformClients

log = logging.getLogger("pylon.gateway")
ABORT_TIMEOUT_S = 5.0
MAX_LISTED = 1000  # ListModels and /v1/models stop after this many deployments


@dataclass(frozen=True)
class Piece:
    """One relayed engine response and where it came from."""

    response: engine_pb2.GenerateResponse
    replica: str  # the replica's job id
    deployment: str  # "tenants/{t}/deployments/{d}"


def model_uri(field: str, value: str) -> str:
    """A request's model reference ("name@alias", "name/versions/3", "name/latest", with or
    without "models:/") as the registry's URI."""
    uri = value if value.startswith("models:/") else f"models:/{value}"
    if not MODEL_URI_RE.fullmatch(uri):
        raise InvalidArgument.field(field, MODEL_URI_RULE.replace("models:/", "[models:/]"))
    return uri


def checked_sampling(s: engine_pb2.SamplingParams, prompt: str | None) -> engine_pb2.SamplingParams:
    """``s`` with the gateway's default max_tokens, refused (INVALID_ARGUMENT naming each field) by
    the engines' own rules; ``prompt`` is checked too unless the request is a chat (None)."""
    out = engine_pb2.SamplingParams()
    out.CopyFrom(s)
    out.max_tokens = out.max_tokens or requests.DEFAULT_MAX_TOKENS
    options = wire.sampling_options(out)
    bad = engine_sampling_violations(options) if prompt is None else requests.sampling_violations(prompt, options)
    if bad:
        raise requests.invalid(bad)
    return out


class Inference:
    def __init__(self, deployments: DeploymentRecords, clients: PlatformClients,
                 hooks: ServingHooks | None = None) -> None:
        self._d = deployments
        self._c = clients
        self.hooks = hooks or ServingHooks()  # autoscaling and canaries (api/serving.py)
        self._chat = ChatModels(clients)
        self._inflight: dict[str, int] = {}
        self._aborts: set[asyncio.Task[None]] = set()

    async def resolve(self, deployment: str, model: str, timeout: float,
                      fields: tuple[str, str] = ("deployment", "model")) -> DeploymentRecord:
        """The deployment a request names, directly or by model (NOT_FOUND for another tenant's,
        as for a missing one)."""
        p = principal()
        if bool(deployment) == bool(model):
            raise InvalidArgument(f"give exactly one of {fields[0]} and {fields[1]}",
                                  [FieldViolation(fields[0], f"give exactly one of {fields[0]} and {fields[1]}")])
        if deployment:
            tenant, dep = inputs.deployment_name(fields[0], deployment, p)
            return await self._d.get(tenant, dep)
        uri = model_uri(fields[1], model)
        with calling("registry"):
            registry = await self._c.registry()
            version = (await registry.ResolveModelUri(registry_pb2.ResolveModelUriRequest(uri=uri),
                                                      metadata=forward_metadata(), timeout=timeout)).version
        prefix = f"tenants/{p.tenant}/deployments/"
        found: list[DeploymentRecord] = []
        for name in sorted(d for d in version.deployments if d.startswith(prefix)):
            with contextlib.suppress(NotFound):
                found.append(await self._d.get(p.tenant, name[len(prefix):]))
        for rec in found:  # one with a ready replica first
            if await self._ready_replicas(rec):
                return rec
        if found:
            return found[0]
        raise NotFound(f"no deployment of tenant {p.tenant} serves {uri} (version {version.version})")

    async def _ready_replicas(self, rec: DeploymentRecord) -> list[ReplicaView]:
        # Only replicas of live slots: a retired replica may still look fresh for a few seconds.
        slots = rec.live_job_ids()
        now = time.time()
        return [r for r in await self._d.replicas(rec.tenant, rec.deployment_id) if r.job_id in slots and r.fresh(now)]

    async def chat_prompt(self, rec: DeploymentRecord, messages: Sequence[chat.ChatMessage], timeout: float,
                          field: str = "messages") -> list[int]:
        """The token ids of ``messages`` rendered by the served version's chat template."""
        bad = chat.message_violations(messages, field)
        if bad:
            raise requests.invalid(bad)
        with calling("registry"):
            model = await self._chat.get(rec.model_version, timeout)
        return await asyncio.to_thread(model.encode, messages, field)

    async def relay(self, rec: DeploymentRecord, request: engine_pb2.GenerateRequest,
                    timeout: float) -> AsyncGenerator[Piece, None]:
        """Stream ``request`` from the least-loaded ready replica of ``rec``. Leaving early (the
        caller went away) cancels the engine call and calls the replica's Abort, which frees the
        request's KV blocks at once."""
        ready = await self._ready_replicas(rec) or await self.hooks.hold(rec, self._ready_replicas, timeout)
        replica = pick_replica(self.hooks.pool(rec, ready), self._inflight, time.time())
        if replica is None:
            raise Unavailable(f"{rec.name} has no ready replica yet; retry shortly")
        engine = await self._c.engine(replica.address)
        engine_request = engine_pb2.GenerateRequest()
        engine_request.CopyFrom(request)
        # Unique on the replica whatever callers send (two tenants may pick the same request id).
        suffix = uuid.uuid4().hex[:16]
        engine_request.request_id = f"{request.request_id[:100]}.{suffix}" if request.request_id else f"gw.{suffix}"
        self._inflight[replica.address] = self._inflight.get(replica.address, 0) + 1
        call = engine.Generate(engine_request, timeout=timeout)
        finished = False
        started, ttft = time.monotonic(), None
        try:
            with calling(f"replica {replica.job_id}"):
                try:
                    async for response in call:
                        ttft = time.monotonic() - started if ttft is None else ttft
                        yield Piece(response, replica.job_id, rec.name)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.CANCELLED:
                        self.hooks.served(rec, replica.job_id, ttft, False)
                    raise
            finished = True
            self.hooks.served(rec, replica.job_id, ttft, True)
        finally:
            self._inflight[replica.address] -= 1
            if not finished and not call.done():
                call.cancel()
                task = asyncio.ensure_future(self._abort(replica, engine_request.request_id))
                self._aborts.add(task)
                task.add_done_callback(self._aborts.discard)

    async def _abort(self, replica: ReplicaView, engine_request_id: str) -> None:
        """Abort on the replica; cancelling the call alone frees the request only when the
        replica notices the cancellation."""
        try:
            engine = await self._c.engine(replica.address)
            await engine.Abort(engine_pb2.AbortRequest(request_id=engine_request_id), timeout=ABORT_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            log.warning("abort failed", extra={"replica": replica.job_id, "code": e.code().name})

    async def list_models(self, tenant: str) -> list[tuple[DeploymentRecord, bool]]:
        """The tenant's deployments by id (at most ``MAX_LISTED``), each with whether it serves."""
        out: list[tuple[DeploymentRecord, bool]] = []
        token = ""
        while len(out) < MAX_LISTED:
            recs, token = await self._d.list_deployments(tenant, 100, token)
            for rec in recs:
                out.append((rec, bool(await self._ready_replicas(rec))))
            if not token:
                break
        return out[:MAX_LISTED]


@contextlib.contextmanager
def calling(service: str) -> Iterator[None]:
    """Calls to another service inside: its errors pass on without internal details."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise inputs.passed_on(service, e) from None
