"""Map typed domain errors to gRPC status codes with ``google.rpc`` details.

The only place that knows both vocabularies. Unknown exceptions become INTERNAL with the request
id in the message and the traceback in the log, never in the response. Every message leaving a
service is cut to ``MAX_MESSAGE`` characters and has network addresses (``10.0.0.7:6379``,
``ipv4:...``, URLs) replaced, so a reply never carries a whole input or an internal address.
"""

from __future__ import annotations

import re

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pylon_services.common.errors import InvalidArgument, PylonError, ResourceExhausted

DOMAIN = "pylon.dev"
MAX_MESSAGE = 1024
MAX_VIOLATION = 512
_ADDRESS = re.compile(r"\b(?:ipv4|ipv6|unix|unix-abstract|dns):[^\s,;)]+|\b(?:https?|grpcs?|rediss?|tcp)://[^\s,;)]+"
                      r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\[[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}\](?::\d+)?")


def scrub(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` without network addresses, cut to ``limit`` characters."""
    text = _ADDRESS.sub("<address>", text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def passthrough_details(code: grpc.StatusCode, details: str, from_pylon: bool) -> str:
    """The message of a downstream service's error passed on to our caller: a Pylon service's
    own message (it carries Pylon's status details) scrubbed; grpc's own (a peer unreachable,
    its deadline passed), which names addresses, replaced by what it means."""
    if from_pylon:
        return scrub(details)
    return f"a call to another platform service failed ({code.name}); retry later"


def grpc_code(err: PylonError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code_name, grpc.StatusCode.UNKNOWN)


def to_status(err: PylonError, request_id: str) -> grpc.Status:
    """Build the status (code, message, details) for a typed error."""
    code = grpc_code(err)
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=scrub(err.message))
    info = error_details_pb2.ErrorInfo(reason=err.code_name, domain=DOMAIN, metadata={"request_id": request_id})
    proto.details.add().Pack(info)
    if isinstance(err, InvalidArgument) and err.violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field[:MAX_VIOLATION],
                                                        description=scrub(v.description, MAX_VIOLATION))
            for v in err.violations[:100]])
        proto.details.add().Pack(bad)
    retry = getattr(err, "retry_after_s", None)
    if isinstance(err, ResourceExhausted) and retry is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry * 1e9))
        proto.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(proto)


def internal_status(request_id: str) -> grpc.Status:
    proto = status_pb2.Status(code=code_pb2.INTERNAL,
                              message=f"internal error; see the server log for request id {request_id}")
    return rpc_status.to_status(proto)
