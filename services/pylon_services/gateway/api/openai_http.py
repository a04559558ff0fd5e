"""The OpenAI-compatible HTTP API on the gateway's own port (``PYLON_GATEWAY_HTTP_PORT``), served
by aiohttp in the gateway's process and event loop: ``POST /v1/completions``,
``POST /v1/chat/completions`` (SSE when ``stream`` is true, with ``stream_options.include_usage``)
and ``GET /v1/models``.

It is a second transport over ``inference.py``, not a second gateway: the same API keys (the
gRPC server's ``ApiKeyStore`` and its cache) and roles (completions need editor, as Generate
does; models viewer), the same resolution, checks and routing. Errors are OpenAI's body,
``{"error": {"message", "type", "param", "code"}}``, with the status the gRPC code maps to.
A client that disconnects cancels its handler (aiohttp's handler cancellation), which aborts
the request on the engine replica.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from grpc_status import rpc_status

from pylon.engine.v1 import engine_pb2
from pylon_services.common.errors import InvalidArgument, PylonError, ResourceExhausted
from pylon_services.gateway.api import inputs, openai_map
from pylon_services.gateway.api.admission import PRIORITY_HEADER, Admission
from pylon_services.gateway.api.inference import SESSION_HEADER, Inference, Piece, checked_sampling, session_id
from pylon_services.runtime.auth import ApiKeyStore, authorize
from pylon_services.runtime.context import principal, set_call
from pylon_services.runtime.context import request_id as current_request_id
from pylon_services.runtime.errors import scrub
from pylon_services.runtime.jsonlog import ACCESS
from pylon_services.runtime.settings import Settings

log = logging.getLogger("pylon.gateway.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# gRPC code -> (HTTP status, OpenAI error type, OpenAI error code).
_HTTP = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", None),
    "FAILED_PRECONDITION": (400, "invalid_request_error", "failed_precondition"),
    "UNAUTHENTICATED": (401, "authentication_error", "invalid_api_key"),
    "PERMISSION_DENIED": (403, "permission_error", "permission_denied"),
    "NOT_FOUND": (404, "invalid_request_error", "model_not_found"),
    "ALREADY_EXISTS": (409, "invalid_request_error", "conflict"),
    "ABORTED": (409, "invalid_request_error", "conflict"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error", "rate_limit_exceeded"),
    "CANCELLED": (499, "invalid_request_error", "cancelled"),
    "UNIMPLEMENTED": (501, "server_error", "not_implemented"),
    "UNAVAILABLE": (503, "server_error", "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "server_error", "timeout"),
}


class HttpError(Exception):
    """An error as OpenAI's body and its HTTP status."""

    def __init__(self, code: str, message: str, param: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.code = _HTTP.get(code, (500, "server_error", "internal_error"))
        self.message, self.param, self.retry_after_s = scrub(message), param, retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, request_id: str) -> web.Response:
        headers = {"x-request-id": request_id}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after_s)))
        return web.json_response(self.body(), status=self.status, headers=headers)


def http_error(exc: BaseException, request_id: str) -> HttpError:
    """Any error of a request as OpenAI's: typed errors and the engines' own (passed through
    from gRPC with their field violations and retry delay); anything else is a 500 naming the
    request id, its traceback only in the log."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, InvalidArgument):
        bad = openai_map.renamed(exc.violations)
        message = "; ".join(f"{v.field}: {v.description}" for v in bad[:20]) or exc.message
        return HttpError("INVALID_ARGUMENT", message, bad[0].field if bad else None)
    if isinstance(exc, PylonError):
        retry = exc.retry_after_s if isinstance(exc, ResourceExhausted) else None
        return HttpError(exc.code_name, exc.message, retry_after_s=retry)
    if isinstance(exc, grpc.aio.AioRpcError):
        return _from_rpc(exc)
    log.exception("unhandled error", extra={"request_id": request_id}, exc_info=exc)
    return HttpError("INTERNAL", f"internal error; see the server log for request id {request_id}")


def _from_rpc(e: grpc.aio.AioRpcError) -> HttpError:
    from google.rpc import error_details_pb2

    param, retry = None, None
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                param = openai_map.openai_field(bad.field_violations[0].field)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToNanoseconds() / 1e9
    message = e.details() or e.code().name
    if param and message.startswith("sampling."):
        message = message[len("sampling."):]
    return HttpError(e.code().name, message, param, retry)


class OpenAIHttpServer:
    """The HTTP server; ``start`` binds ``PYLON_HOST:PYLON_GATEWAY_HTTP_PORT`` (0: a free port,
    -1: off) and ``port`` says where it listens."""

    def __init__(self, serve: Inference, keys: ApiKeyStore, settings: Settings,
                 admission: Admission | None = None) -> None:
        self._serve = serve
        self._admission = admission
        self._keys = keys
        self._settings = settings
        self.port = 0
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=settings.max_message_bytes, middlewares=[self._middleware])
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self.app = app

    async def start(self) -> None:
        s = self._settings
        if s.gateway_http_port < 0:
            return
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=s.shutdown_grace_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.gateway_http_port, reuse_port=False)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("serving http", extra={"service": "gateway", "http_port": self.port})

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish for up to the shutdown grace, then close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request id, authentication, errors and one access-log line per request, as the gRPC
        interceptor does for its calls."""
        start = time.perf_counter()
        request_id = request.headers.get("x-request-id", "")
        status, tenant = 500, ""
        try:
            request_id = inputs.request_id(request_id[:200]) if request_id else ""
            request_id = request_id or _new_request_id()
            token = _bearer(request.headers.get("authorization", ""))
            p = self._keys.authenticate_cached(token) or await self._keys.authenticate(token)
            tenant = p.tenant
            authorize(p, "viewer" if request.method == "GET" else "editor")
            set_call(p, request_id, token)
            response = await handler(request)
            status = response.status
            if not response.prepared:  # a stream set its own before it started
                response.headers["x-request-id"] = request_id
            return response
        except ConnectionResetError:  # the client went away mid-stream: nothing to answer
            status = 499
            raise
        except web.HTTPException as e:  # aiohttp's own: 404 route, 405 method
            status = e.status
            err = HttpError("NOT_FOUND" if e.status == 404 else "INVALID_ARGUMENT", e.reason)
            err.status, err.code = e.status, None
            return err.response(request_id or _new_request_id())
        except Exception as e:  # noqa: BLE001 - every error becomes OpenAI's body
            err = http_error(e, request_id)
            status = err.status
            return err.response(request_id or _new_request_id())
        finally:
            ACCESS.write("info" if status < 500 else "error", "http", {
                "request_id": request_id, "tenant": tenant, "method": f"{request.method} {request.path}",
                "status": status, "latency_ms": round((time.perf_counter() - start) * 1000, 3)})

    async def _models(self, request: web.Request) -> web.Response:
        tenant = principal().tenant
        # A deployment another tenant shares goes by its full name: a bare id is the caller's own.
        data = [{"id": rec.deployment_id if rec.tenant == tenant else rec.name, "object": "model",
                 "created": int(rec.create_time), "owned_by": rec.tenant, "root": rec.model_version,
                 "model_uri": rec.model_uri, "ready": ready}
                for rec, ready in await self._serve.list_models(tenant)]
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise HttpError("INVALID_ARGUMENT", "the body is not JSON", "body") from None
        req = openai_map.parse(body, chat)
        timeout = self._settings.max_call_s
        sampling = checked_sampling(req.sampling, None if chat or req.prompt_token_ids else req.prompt)
        deployment, model = openai_map.target(req.model)
        rec = await self._serve.resolve(deployment, model, timeout, fields=("model", "model"))
        rid = request.headers.get("x-request-id", "")
        engine_request = engine_pb2.GenerateRequest(request_id=inputs.request_id(rid[:128]) if rid else "",
                                                    prompt=req.prompt, sampling=sampling)
        if chat:
            engine_request.prompt_token_ids.extend(await self._serve.chat_prompt(rec, req.messages, timeout))
        else:
            engine_request.prompt_token_ids.extend(req.prompt_token_ids)
        session = session_id(request.headers.get(SESSION_HEADER))
        pieces = self._serve.relay(rec, engine_request, timeout, session) if self._admission is None else \
            self._admission.serve(rec, engine_request, request.headers.get(PRIORITY_HEADER, ""),
                                  lambda: self._serve.relay(rec, engine_request, timeout, session))
        try:
            if req.stream:
                return await self._sse(request, pieces, req, chat)
            return await self._whole(pieces, req, chat)
        finally:
            await pieces.aclose()  # a client gone mid-stream: the relay aborts the engine request

    async def _whole(self, pieces: AsyncGenerator[Piece, None], req: openai_map.OpenAIRequest,
                     chat: bool) -> web.Response:
        texts: dict[int, str] = {}
        finish: dict[int, str] = {}
        usage = engine_pb2.Usage()
        async for piece in pieces:
            r = piece.response
            texts[r.index] = texts.get(r.index, "") + r.text
            if r.finish_reason:
                finish[r.index] = openai_map.FINISH.get(r.finish_reason, "stop")
            usage = r.usage
        return web.json_response(openai_map.whole(openai_map.new_id(chat), req.model, chat, texts, finish, usage))

    async def _sse(self, request: web.Request, pieces: AsyncGenerator[Piece, None], req: openai_map.OpenAIRequest,
                   chat: bool) -> web.StreamResponse:
        """Server-sent events. The response starts with the first piece, so an error before it
        (no replica, the engine's refusal) still gets its own status code; one after it ends
        the stream with an error event."""
        first_piece = await anext(pieces, None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "x-request-id": current_request_id()})
        await resp.prepare(request)
        rid, started = openai_map.new_id(chat), set()
        usage = engine_pb2.Usage()

        async def send(obj: Any) -> None:
            await resp.write(f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode())

        try:
            piece = first_piece
            while piece is not None:
                r = piece.response
                usage = r.usage
                finish = openai_map.FINISH.get(r.finish_reason) if r.finish_reason else None
                if r.text or finish or (chat and r.index not in started):
                    choice = openai_map.choice_delta(chat, r.index, r.text, finish, r.index not in started)
                    started.add(r.index)
                    await send(openai_map.chunk(rid, req.model, chat, [choice], req.include_usage))
                piece = await anext(pieces, None)
            if req.include_usage:
                await send(openai_map.chunk(rid, req.model, chat, [], True, usage))
        except (grpc.aio.AioRpcError, PylonError) as e:
            await send(http_error(e, "").body())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _bearer(header: str) -> str:
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def _new_request_id() -> str:
    import os

    return os.urandom(8).hex()
