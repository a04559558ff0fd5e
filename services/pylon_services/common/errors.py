"""Typed domain errors.

Domain and adapter code raises these; the runtime's error interceptor maps each one to a gRPC
status code plus ``google.rpc`` details. Nothing here imports grpc, so domain code stays pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: ``field`` is a dotted path (``spec.workers``), ``description`` the rule."""

    field: str
    description: str


class PylonError(Exception):
    """Base of every typed error; ``message`` is safe to show to the caller."""

    code_name = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PylonError):
    """The request itself is wrong; ``violations`` name the offending fields."""

    code_name = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFound(PylonError):
    code_name = "NOT_FOUND"


class AlreadyExists(PylonError):
    code_name = "ALREADY_EXISTS"


class FailedPrecondition(PylonError):
    code_name = "FAILED_PRECONDITION"


class Aborted(PylonError):
    """A concurrency conflict (stale etag, lost race); the caller may re-read and retry."""

    code_name = "ABORTED"


class ResourceExhausted(PylonError):
    """Over a quota or limit; ``retry_after_s`` tells the caller when to come back."""

    code_name = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermissionDenied(PylonError):
    code_name = "PERMISSION_DENIED"


class Unauthenticated(PylonError):
    code_name = "UNAUTHENTICATED"


class Unavailable(PylonError):
    code_name = "UNAVAILABLE"


class Unimplemented(PylonError):
    code_name = "UNIMPLEMENTED"


class Internal(PylonError):
    code_name = "INTERNAL"


class DeadlineExceeded(PylonError):
    """The call's deadline passed (or its caller went away) before its work was done."""

    code_name = "DEADLINE_EXCEEDED"
