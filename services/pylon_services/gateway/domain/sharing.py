"""Deployments shared across tenants, pure: who else may send requests to a deployment, the
rules of its ``shared_with`` list, and the change of that list under compare-and-swap.

A platform team serves one model to many teams from one deployment: the teams (tenants) in
``shared_with``, or every tenant for ``"*"``, may send Generate, Complete, Chat and OpenAI
requests to it by its full name. Each request is admitted as its caller's (the caller's limits,
its share of the fair queue, its metrics); the replicas, their jobs and every management call
stay the owner's, and a tenant the deployment is not shared with cannot tell it exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from pylon_services.common.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument
from pylon_services.common.names import TENANT_RE, TENANT_RULE
from pylon_services.gateway.domain.deployments import DeploymentRecord
from pylon_services.gateway.domain.ports import DeploymentRecords

EVERYONE = "*"
MAX_SHARED = 64


def sharing_violations(values: Sequence[str], owner: str, field: str) -> list[FieldViolation]:
    """What is wrong with a ``shared_with`` list, each problem naming ``field[i]``: a value that
    is neither a tenant id nor "*", a duplicate, the owner itself; more than ``MAX_SHARED``."""
    if len(values) > MAX_SHARED:
        return [FieldViolation(field, f"at most {MAX_SHARED} tenants, got {len(values)}")]
    bad: list[FieldViolation] = []
    seen: set[str] = set()
    for i, v in enumerate(values):
        name = f"{field}[{i}]"
        if v != EVERYONE and not TENANT_RE.match(v):
            bad.append(FieldViolation(name, f'{TENANT_RULE}, or "*" for every tenant'))
        elif v == owner:
            bad.append(FieldViolation(name, "is the deployment's own tenant: it needs no sharing"))
        elif v in seen:
            bad.append(FieldViolation(name, "is listed twice"))
        seen.add(v)
    return bad


def checked_sharing(values: Sequence[str], owner: str, field: str) -> tuple[str, ...]:
    """``values`` as a record keeps them, or InvalidArgument naming each bad one."""
    bad = sharing_violations(values, owner, field)
    if bad:
        raise InvalidArgument(f"{field}: {bad[0].description}", bad)
    return tuple(values)


def visible_to(rec: DeploymentRecord, tenant: str) -> bool:
    """Whether ``tenant`` may send requests to the deployment: its owner, or shared with it."""
    return tenant == rec.tenant or EVERYONE in rec.shared_with or tenant in rec.shared_with


def share(rec: DeploymentRecord, shared_with: tuple[str, ...], expected_etag: str = "") -> DeploymentRecord:
    """The record shared with ``shared_with`` instead; refuses a stale ``expected_etag``
    (Aborted) and a deployment being deleted."""
    if expected_etag and expected_etag != rec.etag:
        raise Aborted(f"{rec.name} changed since etag {expected_etag!r} (now {rec.etag!r}); read it again and retry")
    if rec.deleting:
        raise FailedPrecondition(f"{rec.name} is being deleted")
    return dataclasses.replace(rec, shared_with=shared_with)


class SharedDeploymentRecords(DeploymentRecords, Protocol):
    """Deployment records with the index of what is shared with whom (``store/deployments.py``
    keeps it in the same atomic writes as the records)."""

    async def shared_with_tenant(self, tenant: str) -> list[DeploymentRecord]:
        """Other tenants' deployments ``tenant`` may send requests to (named in their
        ``shared_with``, or shared with every tenant), by name."""
        ...
