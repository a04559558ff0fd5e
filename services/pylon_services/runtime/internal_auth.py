"""The platform's internal credential on the wire: ``authorization: Bearer <internal key>``
(``Settings.internal_key``). Engine replicas require it of every call (their port is reachable
from user code on the same node); services add it to their calls to them. Health checks are
exempt so probes work."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from pylon.engine.v1 import engine_pb2_grpc

_HEALTH_PREFIX = "/grpc.health.v1.Health/"


def bearer(key: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {key}")


class RequireInternalKey(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call but health checks that lacks the internal key; with
    no key configured, refuses them all rather than serve anyone."""

    def __init__(self, key: str) -> None:
        self._expected = f"Bearer {key}".encode() if key else b""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method.startswith(_HEALTH_PREFIX) or self._allowed(handler_call_details):
            return await continuation(handler_call_details)
        return _refusal(handler_call_details)

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        got = next((v for k, v in details.invocation_metadata or () if k == "authorization"), "")
        raw = got.encode() if isinstance(got, str) else bytes(got)
        return bool(self._expected) and hmac.compare_digest(raw, self._expected)


def _refusal(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
    """A handler of the right arity that answers UNAUTHENTICATED (the real one is never built)."""
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "this internal API needs the platform's internal key")

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "this internal API needs the platform's internal key")
        yield  # pragma: no cover - makes this an async generator

    if details.method.endswith("/Generate"):  # EngineService's server-streaming method
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class EngineStub:
    """EngineService's calls on one replica's channel, each with the internal key in its metadata.
    The key goes on each call rather than through a client interceptor: grpc.aio runs an
    intercepted call through extra tasks, about 0.3 ms a call on the dev box, on every request the
    gateway relays."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        metadata = (bearer(key),)
        self.Generate: Any = functools.partial(stub.Generate, metadata=metadata)
        self.Abort: Any = functools.partial(stub.Abort, metadata=metadata)
        self.GetStats: Any = functools.partial(stub.GetStats, metadata=metadata)
        self.GetEngineInfo: Any = functools.partial(stub.GetEngineInfo, metadata=metadata)


# A service acting as the platform on a user's behalf (the gateway recording which deployment
# serves a version) sends the caller's own key in ``authorization`` and proves it is a platform
# process with the internal key in this header; user code never holds that key.
INTERNAL_HEADER = "x-pylon-internal-key"


def internal_header(key: str) -> tuple[str, str]:
    return (INTERNAL_HEADER, key)


def carries_internal_key(metadata: Any, key: str) -> bool:
    """Whether call ``metadata`` carries the internal key in ``INTERNAL_HEADER`` (never with no
    key configured)."""
    got = next((v for k, v in metadata or () if k == INTERNAL_HEADER), "")
    raw = got.encode() if isinstance(got, str) else bytes(got)
    return bool(key) and hmac.compare_digest(raw, key.encode())
