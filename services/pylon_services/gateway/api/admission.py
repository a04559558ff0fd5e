"""Admission in front of every serving request, whatever its transport: the caller's quotas
(token buckets and concurrency in Redis, shared by every gateway), then a dispatch slot of the
deployment from this gateway's fair queue, then the relay, then the settlement of its tokens.

The servicer (Generate, Complete, Chat) and the HTTP server wrap their relay in ``serve``.

Redis unreachable: requests fail closed, UNAVAILABLE (HTTP 503). The gateway cannot route
without Redis anyway (deployment records and replica registrations live there), and limits
that vanished with Redis, or per-process ones multiplied by the number of gateway replicas,
would let a tenant past its paid quota exactly when the platform is degraded. A settlement
that cannot reach Redis is logged; the reservation stays taken (never more than the request
was allowed) and its concurrency lease expires on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pylon.engine.v1 import engine_pb2
from pylon.gateway.v1 import gateway_pb2 as pb
from pylon_services.common.errors import PermissionDenied, ResourceExhausted, Unavailable
from pylon_services.gateway.api import metrics
from pylon_services.gateway.api.inference import Piece
from pylon_services.gateway.domain import admission, requests
from pylon_services.gateway.domain.admission import Bucket, FairQueue, Limits, QueueFull, bucket_key
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import Quotas
from pylon_services.runtime.context import principal
from pylon_services.runtime.settings import Settings

log = logging.getLogger("pylon.gateway.admission")
PRIORITY_HEADER = "x-pylon-priority"
QUEUE_RETRY_S = 1.0  # what a refusal for a full queue suggests: about one request's time
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_LIMIT_FIELDS = [f for f in Limits().as_dict()]
# What refused a request (a bucket's name, or "concurrency") as the throttled counter's reason.
_REASONS = {"tenant requests/min": "tenant_requests_per_min", "tenant tokens/min": "tenant_tokens_per_min",
            "API key requests/min": "key_requests_per_min", "API key tokens/min": "key_tokens_per_min",
            "concurrency": "concurrency"}


def grpc_priority(context: grpc.aio.ServicerContext) -> str:
    """The priority a gRPC call asks for in its metadata ("" when none)."""
    for k, v in context.invocation_metadata() or ():
        if k == PRIORITY_HEADER:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return ""


def defaults(settings: Settings) -> Limits:
    s = settings
    return Limits(s.gateway_requests_per_min, s.gateway_tokens_per_min, s.gateway_key_requests_per_min,
                  s.gateway_key_tokens_per_min, s.gateway_max_concurrent, s.gateway_priority, s.gateway_weight)


_Waiter = tuple[str, str, asyncio.Future[None]]  # (tenant, key, resolved when dispatched)


@dataclass
class _Lane:
    """One deployment's dispatch slots in this gateway and the fair queue waiting for them."""

    queue: FairQueue[_Waiter]
    limit: int
    share: float
    window_s: float  # how long a caller counts as active here after its last request
    inflight: int = 0
    by_tenant: dict[str, int] = field(default_factory=dict)  # slots held, by tenant
    by_key: dict[tuple[str, str], int] = field(default_factory=dict)  # slots held, by (tenant, key)
    seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (tenant, key) -> last active

    def full(self) -> tuple[set[str], set[tuple[str, str]]]:
        """Tenants at their share of the slots, and keys at their share of their tenant's: they
        wait even while slots are free, so a tenant (or a key of a tenant) that comes back finds
        one at once instead of behind another's whole flood. The shares bind only while another
        caller is active (has asked within ``window_s``): a tenant alone may use every slot, a key
        alone in its tenant all of its tenant's. A key's share is below its tenant's (by one slot
        at least), else one key at it would hold its whole tenant at its share."""
        now = time.monotonic()
        for k in [k for k, t in self.seen.items() if now - t > self.window_s and k not in self.by_key]:
            del self.seen[k]
        keys = Counter(t for t, _ in set(self.seen) | set(self.by_key))  # active keys, by tenant
        tenant_cap = max(1, math.ceil(self.share * self.limit)) if len(keys) > 1 else self.limit
        key_cap = max(1, min(math.ceil(self.share * tenant_cap), tenant_cap - 1))
        return ({t for t, n in self.by_tenant.items() if n >= tenant_cap},
                {(t, k) for (t, k), n in self.by_key.items() if n >= (key_cap if keys[t] > 1 else tenant_cap)})

    def touch(self, tenant: str, key: str) -> None:
        self.seen[(tenant, key)] = time.monotonic()

    def hold(self, tenant: str, key: str) -> None:
        self.inflight += 1
        self.by_tenant[tenant] = self.by_tenant.get(tenant, 0) + 1
        self.by_key[(tenant, key)] = self.by_key.get((tenant, key), 0) + 1

    def release(self, tenant: str, key: str) -> None:
        self.inflight -= 1
        _decrement(self.by_tenant, tenant)
        _decrement(self.by_key, (tenant, key))
        self.touch(tenant, key)


class Admission:
    def __init__(self, quotas: Quotas, settings: Settings) -> None:
        self._q = quotas
        self._s = settings
        self._defaults = defaults(settings)
        self._limits: dict[str, tuple[float, Limits]] = {}
        self._lanes: dict[str, _Lane] = {}
        self._settling: set[asyncio.Task[None]] = set()

    async def limits(self, tenant: str) -> tuple[Limits, list[str]]:
        """A tenant's limits in effect and the fields it overrides (read from Redis)."""
        stored = await self._q.limits(tenant)
        return self._defaults.merged(stored), sorted(stored)

    async def _cached_limits(self, tenant: str) -> Limits:
        hit = self._limits.get(tenant)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        limits, _ = await self.limits(tenant)
        if len(self._limits) > 10_000:
            self._limits.clear()
        self._limits[tenant] = (time.monotonic() + self._s.gateway_limits_cache_s, limits)
        return limits

    async def serve(self, rec: DeploymentRecord, request: engine_pb2.GenerateRequest, asked_priority: str,
                    relay: Callable[[], AsyncGenerator[Piece, None]]) -> AsyncGenerator[Piece, None]:
        """``relay()``'s pieces once the caller's quotas and a dispatch slot admit ``request``:
        RESOURCE_EXHAUSTED (with a retry delay) over a limit or with the queue full, UNAVAILABLE
        with Redis unreachable. What the request reserved and did not use is given back at the end."""
        p = principal()
        try:
            limits = await self._cached_limits(p.tenant)
        except _REDIS_DOWN as e:
            metrics.throttled(rec.name, p.tenant, "redis_unavailable")
            raise _unavailable(e) from None
        priority = admission.request_priority(asked_priority, limits)
        prompt = len(request.prompt_token_ids) or admission.text_prompt_tokens(request.prompt)
        reserved = admission.reserved_tokens(prompt, request.sampling.max_tokens, request.sampling.n)
        buckets = _buckets(p.tenant, p.key_id, limits, reserved)
        lease = uuid.uuid4().hex
        if buckets or limits.max_concurrent:
            await self._acquire(rec.name, p.tenant, buckets, limits.max_concurrent, lease)
        used = 0
        try:
            w_in, w_out = self._s.gateway_vtc_input_weight, self._s.gateway_vtc_output_weight
            estimate = w_in * prompt / limits.weight
            # The caller's tenant and key: tenants share the deployment fairly, whoever owns it,
            # and the applications of a tenant (one key each) share its part fairly.
            async with self._slot(rec, p.tenant, p.key_id, priority, estimate) as charge:
                charged = estimate
                async for piece in relay():
                    u = piece.response.usage
                    if u.prompt_tokens or u.completion_tokens:
                        used = u.prompt_tokens + u.completion_tokens
                        cost = (w_in * u.prompt_tokens + w_out * u.completion_tokens) / limits.weight
                        charge(cost - charged)
                        charged = cost
                    yield piece
        finally:
            if buckets or limits.max_concurrent:
                refunds = [(b, reserved - used) for b in buckets if b.key.endswith(":tpm")]
                task = asyncio.ensure_future(self._settle(p.tenant, refunds, lease))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)  # a caller gone away does not stop the settlement

    async def _acquire(self, deployment: str, tenant: str, buckets: list[Bucket], max_concurrent: int,
                       lease: str) -> None:
        try:
            verdict = await self._q.acquire(tenant, buckets, max_concurrent, lease, self._s.max_call_s + 60)
        except _REDIS_DOWN as e:
            metrics.throttled(deployment, tenant, "redis_unavailable")
            raise _unavailable(e) from None
        if verdict.admitted:
            return
        metrics.throttled(deployment, tenant, _REASONS.get(verdict.refused_by, "other"))
        if verdict.never:
            b = next(b for b in buckets if b.name == verdict.refused_by)
            raise ResourceExhausted(f"the request needs {b.cost} tokens, above the {verdict.refused_by} limit "
                                    f"of {b.limit}: lower max_tokens, n or the prompt")
        if verdict.refused_by == "concurrency":
            raise ResourceExhausted(f"tenant {tenant} has {max_concurrent} requests queued or running, the most "
                                    "it may; retry later", retry_after_s=verdict.wait_s)
        raise ResourceExhausted(f"over the {verdict.refused_by} limit; retry after {verdict.wait_s:.1f}s",
                                retry_after_s=verdict.wait_s)

    async def _settle(self, tenant: str, refunds: list[tuple[Bucket, int]], lease: str) -> None:
        try:
            await self._q.settle(tenant, refunds, lease)
        except _REDIS_DOWN as e:
            log.warning("settlement failed: the reservation stays taken", extra={"tenant": tenant, "error": str(e)})

    @contextlib.asynccontextmanager
    async def _slot(self, rec: DeploymentRecord, tenant: str, key: str, priority: int,
                    cost: float) -> AsyncIterator[Callable[[float], None]]:
        """Hold one of the deployment's dispatch slots, waiting in its fair queue for it; yields
        what charges the tenant's and the key's counters as tokens are served."""
        s = self._s
        limit = max(1, rec.replicas) * s.gateway_max_inflight_per_replica
        lane = self._lanes.get(rec.name)
        if lane is None:
            queue: FairQueue[_Waiter] = FairQueue(s.gateway_max_queued, s.gateway_max_queued_per_client,
                                                  s.gateway_fair_queuing)
            lane = self._lanes[rec.name] = _Lane(queue, limit, s.gateway_max_inflight_share, s.gateway_share_window_s)
        lane.limit = limit  # follows the deployment's scale
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            lane.touch(tenant, key)
            entry = lane.queue.push(tenant, key, priority, (tenant, key, ready), cost)
        except QueueFull as e:
            metrics.throttled(rec.name, tenant, "queue_full")
            raise ResourceExhausted(f"{e.message}; retry later", retry_after_s=QUEUE_RETRY_S) from None
        _dispatch(lane)
        try:
            if not ready.done():  # a free slot dispatches at once: no timer, no extra task
                await asyncio.wait_for(asyncio.shield(ready), s.gateway_max_queue_wait_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            if not lane.queue.remove(entry):  # dispatched meanwhile: give the slot on
                _release(lane, tenant, key)
            if isinstance(e, TimeoutError):
                metrics.throttled(rec.name, tenant, "queue_wait")
                raise ResourceExhausted(f"{rec.name} is busy: no dispatch slot within "
                                        f"{s.gateway_max_queue_wait_s:g}s; retry later",
                                        retry_after_s=QUEUE_RETRY_S) from None
            raise
        try:
            yield lambda amount: lane.queue.charge(tenant, key, amount)
        finally:
            _release(lane, tenant, key)

    async def get_limits(self, tenant: str) -> pb.GetServingLimitsResponse:
        limits, overridden = await self.limits(tenant)
        return pb.GetServingLimitsResponse(limits=_limits_pb(limits), overridden=overridden)

    async def set_limits(self, request: pb.SetServingLimitsRequest, tenant: str) -> pb.SetServingLimitsResponse:
        """Admin only: the runtime's verb rules let editors call Set*, so the role is checked here."""
        if not principal().is_admin:
            raise PermissionDenied("setting serving limits needs an admin key")
        overrides = {f: getattr(request.limits, f) for f in _LIMIT_FIELDS if request.limits.HasField(f)}
        bad = admission.limit_violations(overrides)
        if bad:
            raise requests.invalid(bad)
        await self._q.set_limits(tenant, overrides)
        self._limits.pop(tenant, None)
        limits, overridden = await self.limits(tenant)
        return pb.SetServingLimitsResponse(limits=_limits_pb(limits), overridden=overridden)

    def queue_depth(self, deployment: str) -> int:
        """Requests waiting in this gateway for the deployment (metrics, autoscaling, tests)."""
        lane = self._lanes.get(deployment)
        return len(lane.queue) if lane else 0


def _dispatch(lane: _Lane) -> None:
    """Give free slots to the queue's next requests."""
    while lane.inflight < lane.limit:
        waiter = lane.queue.pop(*lane.full())
        if waiter is None:
            return
        tenant, key, ready = waiter
        lane.hold(tenant, key)
        ready.set_result(None)


def _release(lane: _Lane, tenant: str, key: str) -> None:
    lane.release(tenant, key)
    _dispatch(lane)


def _decrement(counts: dict[Any, int], k: Any) -> None:
    held = counts.pop(k, 0) - 1
    if held > 0:
        counts[k] = held


def _buckets(tenant: str, key_id: str, limits: Limits, tokens: int) -> list[Bucket]:
    """The buckets a request draws on: each limit that is set."""
    out = []
    for scope, label, rpm, tpm in (("tenant", "tenant", limits.requests_per_min, limits.tokens_per_min),
                                   (f"key:{key_id}", "API key", limits.key_requests_per_min, limits.key_tokens_per_min)):
        if rpm:
            out.append(Bucket(f"{label} requests/min", bucket_key(tenant, scope, "rpm"), rpm, 1))
        if tpm:
            out.append(Bucket(f"{label} tokens/min", bucket_key(tenant, scope, "tpm"), tpm, tokens))
    return out


def _limits_pb(limits: Limits) -> pb.ServingLimits:
    d: dict[str, Any] = limits.as_dict()
    return pb.ServingLimits(**d)


def _unavailable(e: BaseException) -> Unavailable:
    log.warning("quota store unreachable: refusing", extra={"error": str(e)})
    return Unavailable("the quota store (Redis) is unreachable; retry shortly")
