"""The platform's internal credential on the wire: ``authorization: Bearer <internal key>``
(``Settings.internal_key``). Engine replicas require it of every call (their port is reachable
from user code on the same node); services add it to their calls to them. Health checks are
exempt so probes work."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

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


def with_internal_key(key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the internal key to every call on a channel (to engine replicas). One
    object per call kind: grpc.aio files an interceptor under the first kind it implements only."""
    return [_AddKeyUnary(key), _AddKeyStream(key)]


class _AddKey:
    def __init__(self, key: str) -> None:
        self._header = bearer(key)

    def _with_key(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._header)
        return details._replace(metadata=metadata)  # type: ignore[attr-defined]


class _AddKeyUnary(_AddKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(self._with_key(client_call_details), request)


class _AddKeyStream(_AddKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(self._with_key(client_call_details), request)


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
