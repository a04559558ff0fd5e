"""Map typed domain errors to gRPC status codes with ``google.rpc`` details.

The only place that knows both vocabularies. Unknown exceptions become INTERNAL with the request
id in the message and the traceback in the log, never in the response.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pylon_services.common.errors import InvalidArgument, PylonError, ResourceExhausted

DOMAIN = "pylon.dev"


def grpc_code(err: PylonError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code_name, grpc.StatusCode.UNKNOWN)


def to_status(err: PylonError, request_id: str) -> grpc.Status:
    """Build the status (code, message, details) for a typed error."""
    code = grpc_code(err)
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=err.message)
    info = error_details_pb2.ErrorInfo(reason=err.code_name, domain=DOMAIN, metadata={"request_id": request_id})
    proto.details.add().Pack(info)
    if isinstance(err, InvalidArgument) and err.violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in err.violations])
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
