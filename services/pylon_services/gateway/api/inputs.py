"""GatewayService request fields checked at the boundary (shapes and sizes before the tenant rules
of ``common/names.py``, so no reply echoes a long input), and the errors of the services the
gateway calls, passed on without what would reveal internal addresses.
"""

from __future__ import annotations

import re

import grpc

from pylon_services.common.errors import Internal, InvalidArgument, PylonError, Unavailable
from pylon_services.common.limits import check_request_id
from pylon_services.common.names import (
    ID_PATTERN,
    ID_RULE,
    MODEL_URI_RE,
    MODEL_URI_RULE,
    TENANT_PATTERN,
    Principal,
    parse_name,
    parse_parent,
    shape_error,
)

ID = re.compile(ID_PATTERN)
_PARENT = re.compile(rf"tenants/{TENANT_PATTERN}")
_DEPLOYMENT = re.compile(rf"tenants/{TENANT_PATTERN}/deployments/{ID_PATTERN}")
_ETAG = re.compile(r"[A-Za-z0-9-]{1,64}")
_DEPLOYMENT_PATTERN = ("tenants", "deployments")
# Codes a called service answers about the caller's request: passed on as they are.
CALLER_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.UNAUTHENTICATED})


class DeadlineExceeded(PylonError):
    code_name = "DEADLINE_EXCEEDED"


class Cancelled(PylonError):
    code_name = "CANCELLED"


def parent(value: str, p: Principal) -> str:
    if value and not _PARENT.fullmatch(value):
        raise shape_error("parent", "tenants/{tenant} (or tenants/- for your own)")
    return parse_parent("parent", value, p)


def deployment_name(field: str, value: str, p: Principal) -> tuple[str, str]:
    """(tenant, deployment id) of ``tenants/{t}/deployments/{d}``."""
    if not _DEPLOYMENT.fullmatch(value):
        raise shape_error(field, "tenants/{tenant}/deployments/{deployment}")
    tenant, dep = parse_name(field, value, _DEPLOYMENT_PATTERN, p)
    return tenant, dep


def deployment_id(value: str) -> str:
    if not ID.fullmatch(value):
        raise InvalidArgument.field("deployment_id", ID_RULE)
    return value


def request_id(value: str) -> str:
    return check_request_id("request_id", value)


def etag(value: str) -> str:
    if value and not _ETAG.fullmatch(value):
        raise InvalidArgument.field("etag", "is not an etag this server issued")
    return value


def page_token(value: str) -> str:
    """ListDeployments' token: the id of the last deployment of the previous page."""
    if value and not ID.fullmatch(value):
        raise InvalidArgument.field("page_token", "is not a token this server issued")
    return value


def model_uri(value: str) -> str:
    if not MODEL_URI_RE.fullmatch(value):
        raise InvalidArgument.field("deployment.model_uri", MODEL_URI_RULE)
    return value




def passed_on(service: str, e: grpc.aio.AioRpcError) -> BaseException:
    """A called service's error as the gateway's: the caller's own mistakes pass on as they are
    (code, message and field violations of our own services); failures of the platform say which
    service failed and no more (their details name internal addresses)."""
    code = e.code()
    if code in CALLER_CODES:
        return e
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the {service} did not answer within the deadline")
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(f"the call to the {service} was cancelled")
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        return Internal(f"the {service} failed ({code.name}); see its log")
    return Unavailable(f"the {service} is unavailable ({code.name}); retry shortly")
