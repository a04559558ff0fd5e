"""One server interceptor for every service: request id, auth, roles, errors, logs, metrics,
undecodable requests and the call's budget of time.

A single interceptor (not four) keeps the per-call overhead small: see
benchmarks/rpc_overhead.py for the cost against a bare grpc.aio server.

Request bytes that do not decode as the method's message are not left to grpc (which answers
UNKNOWN naming a Python exception, before authentication and without a log line): the
interceptor's deserializer hands the handler a marker instead, and the call is authenticated,
refused as INVALID_ARGUMENT on field ``request`` and logged like any other.

Each call gets a ``common.deadline`` budget: the caller's deadline, capped at
``PYLON_MAX_CALL_S``. Work a call runs in threads checks it between steps and stops once the
deadline passed or the call ended (answered, failed, cancelled), so a thread is never left
working for a caller that is gone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pylon_services.common import deadline
from pylon_services.common.errors import InvalidArgument, PylonError, Unavailable, Unimplemented
from pylon_services.runtime import context as callctx
from pylon_services.runtime.auth import ApiKeyStore, authorize, required_role
from pylon_services.runtime.errors import grpc_code, internal_status, passthrough_details, to_status
from pylon_services.runtime.jsonlog import ACCESS

log = logging.getLogger("pylon.rpc")

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"])
HANDLED = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                  ["grpc_service", "grpc_method", "grpc_code"])
LATENCY = Histogram("grpc_server_handling_seconds", "Time to complete an RPC (streams: until the last message).",
                    ["grpc_service", "grpc_method"],
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 60))


class _Method:
    """Per-method facts computed once, not per call: names, the role it needs, its metric children.

    Looking up Prometheus label children (``labels()`` takes a lock and builds a key) on every call
    was a measurable share of the per-call cost; the children are stable, so they are kept here.
    """

    __slots__ = ("service", "method", "needed", "started", "latency", "handled")

    def __init__(self, full_method: str) -> None:
        self.service, _, self.method = full_method.lstrip("/").partition("/")
        self.needed = required_role(full_method)
        self.started = STARTED.labels(self.service, self.method)
        self.latency = LATENCY.labels(self.service, self.method)
        self.handled: dict[grpc.StatusCode, Any] = {}

    def handled_counter(self, code: grpc.StatusCode) -> Any:
        counter = self.handled.get(code)
        if counter is None:
            counter = self.handled[code] = HANDLED.labels(self.service, self.method, code.name)
        return counter


_METHODS: dict[str, _Method] = {}
DEFAULT_MAX_CALL_S = 300.0


class Undecodable:
    """Stands in for a request message whose bytes did not decode (see the module docstring)."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns an ``Undecodable`` instead of raising."""
    if deserializer is None:
        return None
    message = getattr(deserializer, "__self__", None)
    type_name = getattr(getattr(message, "DESCRIPTOR", None), "full_name", "the request message")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any decoding failure is the caller's bad bytes
            return Undecodable(type_name)
    return parse


def _refuse(request: Undecodable) -> InvalidArgument:
    return InvalidArgument.field("request", f"the request bytes do not decode as {request.type_name}")


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream in which an undecodable message fails the call."""
    async for item in requests:
        if isinstance(item, Undecodable):
            raise _refuse(item)
        yield item


def _method_info(full_method: str) -> _Method:
    info = _METHODS.get(full_method)
    if info is None:
        info = _METHODS[full_method] = _Method(full_method)
    return info


class _Call:
    """What one call carries through the interceptor."""

    __slots__ = ("info", "service", "method", "request_id", "token", "needed", "code", "tenant", "start", "budget")

    def __init__(self, info: _Method, metadata: Any) -> None:
        self.info = info
        self.service = info.service
        self.method = info.method
        request_id, auth = "", ""
        for key, value in metadata or ():
            if key == "x-request-id" and isinstance(value, str):
                request_id = value
            elif key == "authorization" and isinstance(value, str):
                auth = value
        # 16 hex characters, without building a UUID object. A caller's id is kept only when it
        # is short and printable: it goes into logs and replies.
        if len(request_id) > 128 or not request_id.isprintable():
            request_id = ""
        self.request_id = request_id or os.urandom(8).hex()
        self.token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        self.needed = info.needed
        self.code = grpc.StatusCode.OK
        self.tenant = ""
        self.start = time.perf_counter()
        self.budget: deadline.CallBudget | None = None


class PylonInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeyStore | None, max_call_s: float = DEFAULT_MAX_CALL_S) -> None:
        self._keys = keys
        self._max_call_s = max_call_s
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        # The wrapped handler depends only on the method (per-call data comes from the context),
        # so it is built once per method rather than on every call.
        cached = self._wrapped.get(details.method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return None
        self._wrapped[details.method] = wrapped = self._wrap(handler, details.method)
        return wrapped

    def _wrap(self, handler: Any, full_method: str) -> Any:
        method = _method_info(full_method)
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, False), parse, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, False), parse, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, True), parse, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, method, True), parse, handler.response_serializer)

    async def _begin(self, call: _Call, request: Any, context: grpc.aio.ServicerContext, streaming: bool) -> Any:
        """Authenticate and authorize, start the call's budget; returns the request to hand on."""
        call.info.started.inc()
        left = context.time_remaining()
        call.budget = deadline.begin(self._max_call_s if left is None else min(left, self._max_call_s))
        principal = None
        if call.needed is not None:
            if self._keys is None:
                raise PylonError("auth is not configured")
            principal = self._keys.authenticate_cached(call.token) or await self._keys.authenticate(call.token)
            authorize(principal, call.needed)
            call.tenant = principal.tenant
        callctx.set_call(principal, call.request_id, call.token)
        if streaming:
            return _checked(request)
        if isinstance(request, Undecodable):
            raise _refuse(request)
        return request

    def _unary(self, behaviour: Callable[..., Awaitable[Any]], method: _Method,
               streaming: bool) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(method, context.invocation_metadata())
            try:
                request = await self._begin(call, request, context, streaming)
                response = await behaviour(request, context)
                context.set_trailing_metadata((("x-request-id", call.request_id),))
                return response
            except BaseException as exc:  # noqa: BLE001 - mapped, logged and re-raised as status
                await self._fail(call, exc, context)
            finally:
                self._finish(call, context)
        return wrapped

    def _stream(self, behaviour: Callable[..., AsyncIterator[Any]], method: _Method,
                streaming: bool) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, context.invocation_metadata())
            try:
                request = await self._begin(call, request, context, streaming)
                async for item in behaviour(request, context):
                    yield item
                context.set_trailing_metadata((("x-request-id", call.request_id),))
            except BaseException as exc:  # noqa: BLE001
                await self._fail(call, exc, context)
            finally:
                self._finish(call, context)
        return wrapped

    async def _fail(self, call: _Call, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Turn ``exc`` into a status on the wire; always raises."""
        if isinstance(exc, NotImplementedError):
            exc = Unimplemented(f"{call.service}/{call.method} is not implemented yet in this release")
        elif isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            # The platform's Redis is down or restarting: a condition to retry, not a bug. Its
            # address stays in the server log, out of the reply.
            log.warning("redis unreachable", extra={"request_id": call.request_id, "method": call.method,
                                                    "error": str(exc)})
            exc = Unavailable("the platform's Redis is unreachable; retry (with the same request id)")
        if isinstance(exc, PylonError):
            call.code = grpc_code(exc)
            status = to_status(exc, call.request_id)
        elif isinstance(exc, grpc.aio.AioRpcError):
            # A downstream service's error passes through with its code, message and details.
            call.code = exc.code()
            md = tuple((k, v) for k, v in (exc.trailing_metadata() or ()) if k == "grpc-status-details-bin")
            await context.abort(exc.code(), passthrough_details(exc.code(), exc.details() or "", bool(md)),
                                md + (("x-request-id", call.request_id),))
        elif isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError":
            call.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        elif isinstance(exc, (GeneratorExit, KeyboardInterrupt, SystemExit)) or type(exc).__name__ == "CancelledError":
            call.code = grpc.StatusCode.CANCELLED
            raise exc
        else:
            call.code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error", extra={"request_id": call.request_id, "method": call.method})
            status = internal_status(call.request_id)
        md = tuple(status.trailing_metadata) + (("x-request-id", call.request_id),)
        await context.abort(status.code, status.details, md)

    def _finish(self, call: _Call, context: grpc.aio.ServicerContext) -> None:
        if call.budget is not None:
            call.budget.end()  # work still running for this call in a thread stops at its next check
        elapsed = time.perf_counter() - call.start
        call.info.handled_counter(call.code).inc()
        call.info.latency.observe(elapsed)
        if call.service.startswith("grpc."):
            return
        level = logging.INFO if call.code != grpc.StatusCode.INTERNAL else logging.ERROR
        if log.isEnabledFor(level):
            ACCESS.write("info" if level == logging.INFO else "error", "rpc", {
                "request_id": call.request_id, "tenant": call.tenant, "method": f"{call.service}/{call.method}",
                "code": call.code.name, "latency_ms": round(elapsed * 1000, 3)})
