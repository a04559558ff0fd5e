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
from pylon_services.common.errors import FieldViolation, InvalidArgument, NotFound, PylonError, Unavailable
from pylon_services.common.names import MODEL_URI_RE, MODEL_URI_RULE
from pylon_services.engines import wire
from pylon_services.engines.contract import sampling_violations as engine_sampling_violations
from pylon_services.gateway.api import inputs, metrics
from pylon_services.gateway.api.chat_models import ChatModel, ChatModels
from pylon_services.gateway.api.replicas import Acting
from pylon_services.gateway.api.route_cache import RouteCache
from pylon_services.gateway.api.serving import ServingHooks
from pylon_services.gateway.domain import chat, requests
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.routing import (
    STALE_AFTER_S,
    ReplicaView,
    Router,
    RoutingConfig,
    Ticket,
    prefix_hashes,
)
from pylon_services.gateway.domain.sharing import SharedDeploymentRecords, visible_to
from pylon_services.runtime.context import forward_metadata, principal, request_id
from pylon_services.runtime.peers import PlatformClients
from pylon_services.runtime.settings import Settings

log = logging.getLogger("pylon.gateway")
ABORT_TIMEOUT_S = 5.0
MAX_LISTED = 1000  # ListModels and /v1/models stop after this many deployments
MAX_ATTEMPTS = 3  # replicas tried for one request before its first token
# A replica that answers these before the first token is down, draining or full: try another.
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
SESSION_HEADER = "x-session-id"  # session affinity: HTTP header or gRPC metadata
MAX_SESSION_CHARS = 128


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
    def __init__(self, deployments: SharedDeploymentRecords, clients: PlatformClients,
                 settings: Settings | None = None, hooks: ServingHooks | None = None) -> None:
        self._d = deployments
        # The serving path's reads (record, replicas) through a short cache; listing reads the store.
        self._routes = RouteCache(deployments, settings.gateway_route_cache_s if settings is not None else 0.0)
        self._c = clients
        self._platform_key = settings.admin_key if settings is not None else ""
        self.hooks = hooks or ServingHooks()  # autoscaling and canaries (api/serving.py)
        self._chat = ChatModels(clients)
        self._router = Router(routing_config(settings) if settings is not None else RoutingConfig())
        self._down: dict[str, float] = {}  # replica address -> when a call to it failed
        self._aborts: set[asyncio.Task[None]] = set()

    async def resolve(self, deployment: str, model: str, timeout: float,
                      fields: tuple[str, str] = ("deployment", "model")) -> DeploymentRecord:
        """The deployment a request names, directly or by model (a model resolves among the
        caller's own deployments). Another tenant's deployment answers NOT_FOUND, as a missing
        one does, unless it is shared with the caller's tenant."""
        p = principal()
        if bool(deployment) == bool(model):
            raise InvalidArgument(f"give exactly one of {fields[0]} and {fields[1]}",
                                  [FieldViolation(fields[0], f"give exactly one of {fields[0]} and {fields[1]}")])
        if deployment:
            try:
                tenant, dep = inputs.deployment_name(fields[0], deployment, p)
            except NotFound:  # another tenant's: the name's shape and ids were checked first
                _, owner, _, dep = deployment.split("/")
                return await self._shared(owner, dep, p.tenant)
            return await self._routes.get(tenant, dep)
        uri = model_uri(fields[1], model)
        with calling("registry"):
            registry = await self._c.registry()
            version = (await registry.ResolveModelUri(registry_pb2.ResolveModelUriRequest(uri=uri),
                                                      metadata=forward_metadata(), timeout=timeout)).version
        prefix = f"tenants/{p.tenant}/deployments/"
        found: list[DeploymentRecord] = []
        for name in sorted(d for d in version.deployments if d.startswith(prefix)):
            with contextlib.suppress(NotFound):
                found.append(await self._routes.get(p.tenant, name[len(prefix):]))
        for rec in found:  # one with a ready replica first
            if await self._ready_replicas(rec):
                return rec
        if found:
            return found[0]
        raise NotFound(f"no deployment of tenant {p.tenant} serves {uri} (version {version.version})")

    async def _shared(self, owner: str, dep: str, tenant: str) -> DeploymentRecord:
        """``owner``'s deployment if it is shared with ``tenant``; NOT_FOUND worded as for a
        missing one otherwise, so a tenant cannot learn what it is not shown."""
        missing = NotFound(f"tenants/{owner}/deployments/{dep} not found")
        try:
            rec = await self._routes.get(owner, dep)
        except NotFound:
            raise missing from None
        if not visible_to(rec, tenant):
            raise missing
        return rec

    async def _ready_replicas(self, rec: DeploymentRecord) -> list[ReplicaView]:
        # Only replicas of live slots: a retired replica may still look fresh for a few seconds.
        slots = rec.live_job_ids()
        now = time.time()
        replicas = await self._routes.replicas(rec.tenant, rec.deployment_id)
        return [r for r in replicas if r.job_id in slots and r.fresh(now)]

    def forget(self, tenant: str, dep: str) -> None:
        """This gateway changed or deleted the deployment: its next request reads it anew."""
        self._routes.forget(tenant, dep)

    async def chat_prompt(self, rec: DeploymentRecord, messages: Sequence[chat.ChatMessage], timeout: float,
                          field: str = "messages") -> list[int]:
        """The token ids of ``messages`` rendered by the served version's chat template."""
        bad = chat.message_violations(messages, field)
        if bad:
            raise requests.invalid(bad)
        with calling("registry"):
            model = await self._chat_model(rec, timeout)
        return await asyncio.to_thread(model.encode, messages, field)

    async def _chat_model(self, rec: DeploymentRecord, timeout: float) -> ChatModel:
        """The version's tokenizer and template, read with the caller's key; for a deployment
        shared with the caller, whose key cannot read the owner's versions, as the platform
        (the sharing already allows the caller to use the version through this deployment)."""
        if rec.tenant == principal().tenant or not self._platform_key:
            return await self._chat.get(rec.model_version, timeout)
        return await self._chat.get(rec.model_version, timeout, Acting.platform(self._platform_key).metadata)

    async def relay(self, rec: DeploymentRecord, request: engine_pb2.GenerateRequest,
                    timeout: float, session: str = "") -> AsyncGenerator[Piece, None]:
        """Stream ``request`` from the replica the router picks (``domain/routing.py``) among the
        deployment's ready ones (none ready: the autoscaling hooks may hold the request while one
        starts). A replica that fails before the first token (down, draining, its queue full) is
        left for another, up to ``MAX_ATTEMPTS``; after it, the error ends this stream only
        (UNAVAILABLE for a replica that died). Leaving early (the caller went away) cancels the
        engine call and calls the replica's Abort, which frees the request's KV blocks at once."""
        engine_request = engine_pb2.GenerateRequest()
        engine_request.CopyFrom(request)
        # Unique on the replica whatever callers send (two tenants may pick the same request id);
        # it starts with the caller's request id, so the replica's logs carry the trace id.
        suffix = uuid.uuid4().hex[:16]
        engine_request.request_id = f"{request.request_id[:100]}.{suffix}" if request.request_id else f"gw.{suffix}"
        span = _Span(rec.name, principal().tenant, request)
        hashes = prefix_hashes(request.prompt_token_ids, request.prompt, self._router.cfg)
        ready = await self._ready_replicas(rec) or await self.hooks.hold(rec, self._ready_replicas, timeout)
        replicas = self._routable(self.hooks.pool(rec, ready))
        tried: list[str] = []
        try:
            while True:
                decision = self._router.choose(replicas, hashes, session, tried)
                if decision is None:
                    raise Unavailable(f"{rec.name} has no ready replica{' left' if tried else ' yet'}; retry shortly")
                metrics.routed(rec.name, decision.reason if not tried else "retry")
                ticket = self._router.start(decision, hashes, session, span.prompt_estimate, span.max_new)
                try:
                    async with contextlib.aclosing(self._stream(decision.replica, engine_request, rec, ticket,
                                                                span, timeout)) as pieces:
                        async for piece in pieces:
                            yield piece
                    span.code = "OK"
                    return
                except grpc.aio.AioRpcError as e:
                    if span.first is None and e.code() in RETRY_CODES and len(tried) + 1 < MAX_ATTEMPTS:
                        tried.append(decision.replica.address)
                        log.warning("replica failed before the first token; trying another", extra={
                            "request_id": request_id(), "replica": decision.replica.job_id, "code": e.code().name})
                        continue
                    raise inputs.passed_on(f"replica {decision.replica.job_id}", e) from None
                finally:
                    self._router.finish(ticket)
        except BaseException as e:
            span.code = _code(e)
            raise
        finally:
            span.end()

    async def _stream(self, replica: ReplicaView, engine_request: engine_pb2.GenerateRequest, rec: DeploymentRecord,
                      ticket: Ticket, span: _Span, timeout: float) -> AsyncGenerator[Piece, None]:
        """One attempt on one replica; a failure of the replica marks it down until it heartbeats
        again. The autoscaling hooks learn each attempt's outcome and TTFT (canary verdicts)."""
        engine = await self._c.engine(replica.address)
        call = engine.Generate(engine_request, timeout=timeout)
        finished = False
        started, ttft = time.monotonic(), None
        try:
            async for response in call:
                ttft = time.monotonic() - started if ttft is None else ttft
                n = len(response.token_ids)
                if n:
                    span.tokens(n)
                    self._router.progress(ticket, n)
                span.usage = response.usage
                yield Piece(response, replica.job_id, rec.name)
            finished = True
            self.hooks.served(rec, replica.job_id, ttft, True)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.hooks.served(rec, replica.job_id, ttft, False)
            if e.code() in RETRY_CODES and e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                self._down[replica.address] = time.time()
            raise
        finally:
            if not finished and not call.done():
                call.cancel()
                task = asyncio.ensure_future(self._abort(replica, engine_request.request_id))
                self._aborts.add(task)
                task.add_done_callback(self._aborts.discard)

    def _routable(self, replicas: list[ReplicaView]) -> list[ReplicaView]:
        """Without the replicas that failed a call since their last heartbeat (a killed replica's
        registration looks fresh for a few seconds more)."""
        if not self._down:
            return replicas
        out = [r for r in replicas if r.last_seen > self._down.get(r.address, 0.0)]
        for address in [a for a, t in self._down.items() if time.time() - t > STALE_AFTER_S]:
            del self._down[address]
        return out

    async def _abort(self, replica: ReplicaView, engine_request_id: str) -> None:
        """Abort on the replica; cancelling the call alone frees the request only when the
        replica notices the cancellation."""
        try:
            engine = await self._c.engine(replica.address)
            await engine.Abort(engine_pb2.AbortRequest(request_id=engine_request_id), timeout=ABORT_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            log.warning("abort failed", extra={"request_id": engine_request_id, "replica": replica.job_id,
                                               "code": e.code().name})

    async def list_models(self, tenant: str) -> list[tuple[DeploymentRecord, bool]]:
        """The tenant's deployments by id, then the other tenants' shared with it by name (at
        most ``MAX_LISTED`` in all), each with whether it serves."""
        recs: list[DeploymentRecord] = []
        token = ""
        while len(recs) < MAX_LISTED:
            page, token = await self._d.list_deployments(tenant, 100, token)
            recs += page
            if not token:
                break
        if len(recs) < MAX_LISTED:
            recs += await self._d.shared_with_tenant(tenant)
        return [(rec, bool(await self._ready_replicas(rec))) for rec in recs[:MAX_LISTED]]


@contextlib.contextmanager
def calling(service: str) -> Iterator[None]:
    """Calls to another service inside: its errors pass on without internal details."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise inputs.passed_on(service, e) from None


def session_id(value: str | None) -> str:
    """The session a request belongs to (``x-session-id``), bounded; "" for none."""
    return (value or "")[:MAX_SESSION_CHARS]


def routing_config(settings: Settings) -> RoutingConfig:
    return RoutingConfig(policy=settings.gateway_routing_policy,
                         load_bound_tokens=settings.gateway_prefix_load_bound_tokens)


def _code(e: BaseException) -> str:
    """How a request ended, for the requests counter: a status code's name."""
    if isinstance(e, PylonError):
        return e.code_name
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code().name
    if isinstance(e, (GeneratorExit, asyncio.CancelledError)):
        return "CANCELLED"
    return "INTERNAL"


class _Span:
    """One request's timings and token counts as the caller sees them, reported at its end."""

    __slots__ = ("metrics", "start", "first", "last", "generated", "usage", "code", "prompt_estimate", "max_new", "n")

    def __init__(self, deployment: str, tenant: str, request: engine_pb2.GenerateRequest) -> None:
        self.metrics = metrics.for_request(deployment, tenant)
        self.start = self.last = time.perf_counter()
        self.first: float | None = None
        self.generated = 0
        self.usage: engine_pb2.Usage | None = None
        self.code = "UNKNOWN"
        # Text prompts: about 4 characters a token, until the engine's usage says exactly.
        self.prompt_estimate = len(request.prompt_token_ids) or len(request.prompt) // 4 + 1
        self.n = max(1, request.sampling.n)
        self.max_new = (request.sampling.max_tokens or requests.DEFAULT_MAX_TOKENS) * self.n

    def tokens(self, n: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.metrics.ttft.observe(now - self.start)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now
        self.generated += n

    def end(self) -> None:
        prompt = self.usage.prompt_tokens if self.usage is not None else 0
        per_sequence = self.generated // self.n
        self.metrics.ended(self.code, self.start, self.first, time.perf_counter(), prompt, self.generated,
                           per_sequence)
