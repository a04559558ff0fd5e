"""Paged reads of the registry index: models, versions (newest first or sorted), and the
bounds that keep any one page cheap.

Every page is bounded three ways, whatever the token, the filter or the data: it returns at
most ``page_size`` records and at most ``paging.MAX_PAGE_BYTES`` of them; it looks at most
``MAX_LOOKED_AT`` index entries (a filter that matches little ends the page early, with a token
to go on, as AIP-158 allows); and it stops at the call's deadline (``deadline.check``). Tokens
are ``common.paging`` tokens scoped to the query; a position is only ever a place in the index
to continue from, so a forged one costs no more than a real one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pylon_services.common import deadline, paging
from pylon_services.common.errors import FailedPrecondition, InvalidArgument
from pylon_services.common.names import ID_RE
from pylon_services.registry.domain.ports import RegistryIndex

MAX_LOOKED_AT = 10_000  # index entries one page may look at
MAX_SCAN = 100_000  # versions a non-native ordering may sort in memory
Page = tuple[list[dict[str, Any]], str | None]


def all_models(index: RegistryIndex, tenant: str) -> Iterator[dict[str, Any]]:
    after = ""
    while batch := index.list_models(tenant, after, 1000):
        deadline.check("listing models")
        yield from batch
        after = batch[-1]["name"].rsplit("/", 1)[1]


def scan_all(index: RegistryIndex, tenant: str, model: str) -> Iterator[dict[str, Any]]:
    below = None
    while batch := index.scan_versions(tenant, model, below, 1000):
        deadline.check("listing versions")
        yield from batch
        below = batch[-1]["version"]


def models_page(index: RegistryIndex, tenant: str, page_size: int, page_token: str | None,
                keep: Callable[[dict[str, Any]], bool], filter_text: str,
                get: Callable[[str], dict[str, Any]]) -> Page:
    """Models in name order; the token holds the last model id looked at."""
    after = paging.decode_str_token(page_token or "", "models", f"{tenant}|{filter_text}") or ""
    if after and not ID_RE.match(after):
        raise InvalidArgument.field("page_token", "is not a page token this server issued for this list")
    out: list[dict[str, Any]] = []
    budget, looked = paging.PageBudget(), 0
    while looked < MAX_LOOKED_AT:
        deadline.check("listing models")
        batch = index.list_models(tenant, after, max(page_size, 100))
        if not batch:
            return out, None
        for doc in batch:
            model = doc["name"].rsplit("/", 1)[1]
            if keep(doc):
                full = get(model)
                if not budget.take(full):
                    return out, paging.encode_token("models", after, f"{tenant}|{filter_text}")
                out.append(full)
            after, looked = model, looked + 1
            if len(out) == page_size:
                break
        if len(out) == page_size:
            more = bool(index.list_models(tenant, after, 1))
            return out, paging.encode_token("models", after, f"{tenant}|{filter_text}") if more else None
    return out, paging.encode_token("models", after, f"{tenant}|{filter_text}")


def native_page(index: RegistryIndex, tenant: str, model: str, page_size: int, page_token: str | None,
                wanted: Callable[[dict[str, Any], str], bool], scope: str) -> Page:
    """One model's versions newest first, straight from the index; the token holds the last
    version number looked at, so a page costs O(page) however many versions exist."""
    start = paging.decode_int_token(page_token or "", "versions", scope)
    below = start
    chunk = max(page_size, 50)
    out: list[dict[str, Any]] = []
    budget, looked = paging.PageBudget(), 0
    while looked < MAX_LOOKED_AT:
        deadline.check("listing versions")
        batch = index.scan_versions(tenant, model, below, chunk)
        for d in batch:
            if wanted(d, model):
                d["deployments"] = index.deployments(tenant, model, d["version"])
                if not budget.take(d):
                    return out, paging.encode_token("versions", below, scope) if below else None
                out.append(d)
            below, looked = d["version"], looked + 1
            if len(out) == page_size:
                more = bool(index.scan_versions(tenant, model, below, 1))
                return out, (paging.encode_token("versions", below, scope) if more else None)
        if len(batch) < chunk:
            return out, None
    return out, paging.encode_token("versions", below, scope) if below else None


def sorted_page(index: RegistryIndex, tenant: str, models: list[str], page_size: int, page_token: str | None,
                wanted: Callable[[dict[str, Any], str], bool], key: Callable[[dict[str, Any]], Any],
                reverse: bool, scope: str) -> Page:
    """Versions in another order: every match is sorted in memory (at most ``MAX_SCAN``); the
    token holds the offset of the next page, never beyond the matches."""
    matches = []
    for m in models:
        for d in scan_all(index, tenant, m):
            if wanted(d, m):
                matches.append(d)
                if len(matches) > MAX_SCAN:
                    raise FailedPrecondition(f"more than {MAX_SCAN} versions match; narrow the filter or order by "
                                             "version desc")
    matches.sort(key=key, reverse=reverse)
    start = paging.decode_int_token(page_token or "", "sorted-versions", scope, hi=len(matches)) or 0
    out: list[dict[str, Any]] = []
    budget = paging.PageBudget()
    for d in matches[start:start + page_size]:
        d["deployments"] = index.deployments(tenant, d["name"].split("/")[3], d["version"])
        if not budget.take(d):
            break
        out.append(d)
    end = start + len(out)
    return out, (paging.encode_token("sorted-versions", end, scope) if end < len(matches) else None)
