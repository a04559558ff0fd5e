"""Long-running operations (AIP-151) of the ingest service: processing and tokenization.

An operation is persisted (Redis, see ``store/redis_state.py``) from the moment it is accepted,
so a restarted or second ingest replica can adopt it: whoever holds an operation's lease runs
it; an operation whose lease lapsed (its runner died) is adopted and run again from the start,
which is safe because every run writes under its own keys and publishes with one create-only
write at the end. After ``MAX_ATTEMPTS`` runs it is marked FAILED with the reason.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from pylon_services.common.errors import NotFound

MAX_ATTEMPTS = 3
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
KINDS = ("process", "tokenize")


@dataclass
class Operation:
    """One operation; ``spec`` holds everything needed to run it again after a crash."""

    id: str
    tenant: str
    kind: str
    target: str
    spec: dict[str, Any]
    state: str = PENDING
    progress: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""  # a typed error's code name, e.g. "INVALID_ARGUMENT"
    error_message: str = ""
    result: str = ""
    attempts: int = 0
    create_time: float = field(default_factory=time.time)
    update_time: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/operations/{self.id}"

    @property
    def done(self) -> bool:
        return self.state in (SUCCEEDED, FAILED)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def fail(self, code: str, message: str) -> None:
        self.state, self.error_code, self.error_message = FAILED, code, message
        self.update_time = time.time()

    def succeed(self, result: str, metadata: dict[str, Any] | None = None) -> None:
        self.state, self.result, self.progress = SUCCEEDED, result, 1.0
        self.metadata.update(metadata or {})
        self.update_time = time.time()


def new_operation(tenant: str, kind: str, target: str, spec: dict[str, Any]) -> Operation:
    """A fresh PENDING operation with a random id."""
    assert kind in KINDS, kind
    return Operation(id="op" + uuid.uuid4().hex[:22], tenant=tenant, kind=kind, target=target, spec=spec)


def next_attempt(op: Operation) -> bool:
    """Count a (re)start; False when the operation has used up its attempts and was failed."""
    if op.attempts >= MAX_ATTEMPTS:
        op.fail("ABORTED", f"ingest stopped {op.attempts} times while running this operation; giving up")
        return False
    op.attempts += 1
    op.state = RUNNING
    if op.attempts > 1:
        op.metadata["resumed"] = op.attempts - 1
    op.update_time = time.time()
    return True


def check_visible(op: Operation | None, tenant: str, op_id: str, admin: bool = False) -> Operation:
    """The operation if the caller may see it; another tenant's answers NOT_FOUND."""
    if op is None or (op.tenant != tenant and not admin):
        raise NotFound(f"tenants/{tenant}/operations/{op_id} not found")
    return op


class OperationStore(Protocol):
    """Where operations live (Redis in production and tests)."""

    async def create(self, op: Operation, request_key: str = "") -> Operation:
        """Store a new operation; with ``request_key``, an earlier operation created under the
        same key is returned instead (idempotent creates)."""
        ...

    async def get(self, op_id: str) -> Operation | None: ...

    async def active_ids(self) -> list[str]:
        """Ids of the operations not done yet."""
        ...

    async def save(self, op: Operation) -> None:
        """Write the operation and notify watchers; done operations leave the active set."""
        ...
