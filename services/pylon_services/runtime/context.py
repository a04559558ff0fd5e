"""Per-call context: the authenticated principal and request id, set by the interceptor.

Servicers read them with ``principal()`` / ``request_id()``; outgoing calls to other services
use ``forward_metadata()`` and ``remaining_timeout()`` so identity and deadlines propagate.
"""

from __future__ import annotations

import contextvars

import grpc

from pylon_services.common.errors import Unauthenticated
from pylon_services.common.names import Principal

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("pylon_principal", default=None)
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("pylon_request_id", default="")
_token: contextvars.ContextVar[str] = contextvars.ContextVar("pylon_token", default="")


def set_call(principal: Principal | None, request_id: str, token: str) -> None:
    _principal.set(principal)
    _request_id.set(request_id)
    _token.set(token)


def principal() -> Principal:
    p = _principal.get()
    if p is None:
        raise Unauthenticated("this method needs an API key")
    return p


def request_id() -> str:
    return _request_id.get()


def forward_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a call this service makes on behalf of its caller."""
    md = [("x-request-id", _request_id.get())]
    if _token.get():
        md.append(("authorization", f"Bearer {_token.get()}"))
    return tuple(md)


def remaining_timeout(context: grpc.aio.ServicerContext, default: float = 30.0) -> float:
    """The caller's remaining deadline (so downstream calls never outlive it), or a default."""
    left = context.time_remaining()
    return default if left is None else max(0.001, left)
