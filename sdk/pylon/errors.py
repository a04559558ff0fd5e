"""SDK exceptions, one per gRPC status code, with the server's structured details."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class PylonError(Exception):
    """Base of every error the SDK raises for a failed call."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, violations: list[FieldViolation] | None = None,
                 retry_after_s: float | None = None, request_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations or []
        self.retry_after_s = retry_after_s
        self.request_id = request_id

    def __str__(self) -> str:
        s = f"{self.code.name}: {self.message}"
        if self.request_id:
            s += f" (request id {self.request_id})"
        return s


class InvalidArgumentError(PylonError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(PylonError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(PylonError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(PylonError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(PylonError):
    code = grpc.StatusCode.ABORTED


class ResourceExhaustedError(PylonError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDeniedError(PylonError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(PylonError):
    code = grpc.StatusCode.UNAUTHENTICATED


class UnavailableError(PylonError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(PylonError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnimplementedError(PylonError):
    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(PylonError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in PylonError.__subclasses__()}


def from_rpc_error(err: grpc.RpcError) -> PylonError:
    """Turn a grpc error into the matching PylonError, unpacking google.rpc details."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    violations: list[FieldViolation] = []
    retry = None
    request_id = ""
    try:
        status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    except ValueError:
        status = None
    for any_ in (status.details if status else []):
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            any_.Unpack(br)
            violations = [FieldViolation(v.field, v.description) for v in br.field_violations]
        elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            any_.Unpack(ri)
            retry = ri.retry_delay.ToNanoseconds() / 1e9
        elif any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            ei = error_details_pb2.ErrorInfo()
            any_.Unpack(ei)
            request_id = ei.metadata.get("request_id", "")
    cls = _BY_CODE.get(code, PylonError)
    exc = cls(message or code.name, violations=violations, retry_after_s=retry, request_id=request_id)
    if cls is PylonError:
        exc.code = code
    return exc
