"""Resource names and ids: one parser and one set of rules for every service.

Names are paths ("tenants/acme/models/gpt/versions/3"). A request may write the tenant as "-"
to mean the caller's own tenant. A name in another tenant is reported as NOT_FOUND (no leak of
what exists), unless the caller is an admin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pylon_services.common.errors import FieldViolation, InvalidArgument, NotFound
from pylon_services.common.limits import MAX_NAME, quote

TENANT_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
ID_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
ID_RULE = "must be 1-63 characters: lowercase letters, digits, '-', '_' or '.', starting with a letter"
TENANT_RULE = "must be 1-63 characters: lowercase letters, digits or '-', starting with a letter"
# A version in a name: a positive number in ASCII digits (``str.isdigit`` also accepts '²',
# which ``int`` refuses), at most 10 of them, or "latest".
VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
VERSION_RULE = "version must be a positive number of at most 10 digits, or 'latest'"
# Fragments for whole-name patterns checked before parsing: an id, and a tenant or "-".
ID_PATTERN = r"[a-z][a-z0-9_.-]{0,62}"
TENANT_PATTERN = r"(?:[a-z][a-z0-9-]{0,62}|-)"
MODEL_URI_RE = re.compile(rf"models:/{ID_PATTERN}(?:@{ID_PATTERN}|/versions/[1-9][0-9]{{0,17}}|/latest)")
MODEL_URI_RULE = "must be models:/<model>@<alias>, models:/<model>/versions/<n> or models:/<model>/latest"


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from the API key by the auth interceptor."""

    tenant: str
    role: str  # "viewer" | "editor" | "admin"
    key_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_write(self) -> bool:
        return self.role in ("editor", "admin")


def check_id(field: str, value: str) -> str:
    """Validate a resource id (dataset, model, deployment...)."""
    if not ID_RE.match(value or ""):
        raise InvalidArgument(f"{field} {quote(value)} {ID_RULE}", [FieldViolation(field, ID_RULE)])
    return value


def check_tenant(field: str, value: str) -> str:
    if not TENANT_RE.match(value or ""):
        raise InvalidArgument(f"{field} {quote(value)} {TENANT_RULE}", [FieldViolation(field, TENANT_RULE)])
    return value


def is_version_number(value: str) -> bool:
    """True for a version number as a name may hold it (``VERSION_RE``)."""
    return bool(VERSION_RE.match(value))


def check_version(field: str, value: str, *, latest: bool = True) -> str:
    """A version reference: a number (``VERSION_RE``), or "latest" when ``latest`` is allowed."""
    if VERSION_RE.match(value) or (latest and value == "latest"):
        return value
    rule = VERSION_RULE if latest else "must be a positive version number of at most 10 digits"
    raise InvalidArgument(f"{field}: version {quote(value, 24)} {rule.removeprefix('version ')}",
                          [FieldViolation(field, rule)])


def shape_error(field: str, expected: str) -> InvalidArgument:
    """``field`` is not of the form ``expected``, worded as ``parse_name`` words it but without
    echoing the value (for checks that run before a name is parsed)."""
    return InvalidArgument(f"{field}: is not of the form {expected}",
                           [FieldViolation(field, f"must be of the form {expected}")])


def parse_name(field: str, name: str, pattern: tuple[str, ...], principal: Principal) -> list[str]:
    """Split ``name`` by a pattern of collection words, e.g. ("tenants", "models", "versions").

    Returns the ids, with the tenant resolved ("-" -> caller's). Raises InvalidArgument when the
    shape is wrong and NotFound when the tenant is not the caller's (admins may cross tenants).
    """
    expected = "/".join(f"{word}/{{{word[:-1]}}}" for word in pattern)
    parts = (name or "").split("/", 2 * len(pattern))
    if (len(name or "") > MAX_NAME or len(parts) != 2 * len(pattern)
            or any(parts[2 * i] != w for i, w in enumerate(pattern))):
        raise InvalidArgument(f"{field}: {quote(name)} is not of the form {expected}",
                              [FieldViolation(field, f"must be of the form {expected}")])
    ids = parts[1::2]
    if ids[0] == "-":
        ids[0] = principal.tenant
    check_tenant(field, ids[0])
    for word, value in zip(pattern[1:], ids[1:], strict=True):
        if word == "versions":
            check_version(field, value)
        else:
            check_id(field, value)
    if ids[0] != principal.tenant and not principal.is_admin:
        raise NotFound(f"{name} not found")
    return ids


def parse_parent(field: str, parent: str, principal: Principal) -> str:
    """A parent "tenants/{t}" (or empty, meaning the caller's tenant); returns the tenant."""
    if not parent:
        return principal.tenant
    return parse_name(field, parent, ("tenants",), principal)[0]
