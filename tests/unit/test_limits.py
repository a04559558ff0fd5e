"""The shared checks every API applies at its boundary (``common.limits``, ``common.paths``,
``common.paging``, ``common.names``), the call budget (``common.deadline``) and the bounds
on a registry list page, without a server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pylon_services.common import deadline, limits, paging
from pylon_services.common.errors import DeadlineExceeded, InvalidArgument
from pylon_services.common.names import Principal, check_version, parse_name
from pylon_services.common.paths import check_path
from pylon_services.registry.domain import listing

P = Principal("acme", "viewer", "k1")
ODD_DIGITS = ["\u00b2", "\u0663", "1\u00b9", "\uff11"]  # '²', Arabic-Indic 3, '1¹', fullwidth 1: isdigit() but not ASCII


@pytest.mark.parametrize("version", [*ODD_DIGITS, "1" * 11, "1" * 5000, "0", "-1", " 1", "1 ", ""])
def test_version_in_a_name_is_ascii_digits_up_to_ten(version: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_name("name", f"tenants/acme/models/m/versions/{version}", ("tenants", "models", "versions"), P)
    assert e.value.violations[0].field == "name" and len(e.value.message) < 300


def test_valid_names_and_versions_parse() -> None:
    assert parse_name("n", "tenants/-/models/m/versions/9999999999", ("tenants", "models", "versions"), P) == [
        "acme", "m", "9999999999"]
    assert check_version("v", "latest") == "latest"
    with pytest.raises(InvalidArgument):
        check_version("v", "latest", latest=False)


def test_a_huge_name_is_refused_and_not_echoed() -> None:
    name = "tenants/acme/models/" + "m" * (1 << 20)
    with pytest.raises(InvalidArgument) as e:
        parse_name("name", name, ("tenants", "models"), P)
    assert len(e.value.message) < 300 and "characters" in e.value.message


@pytest.mark.parametrize("path", ["a\x00b", "a\nb", "a\x7fb", "a\u0085b", "a\u2028b", "/abs", "a/../b", "..", ".",
                                  "a//b", "a/", "a\\b", "x" * 256, "/".join(["y" * 200] * 6), ""])
def test_paths_obey_one_rule(path: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_path("files[0]", path)
    assert e.value.violations[0].field == "files[0]" and len(e.value.message) < 600


def test_good_paths_and_plain_names() -> None:
    assert check_path("p", "model-00001-of-00002.safetensors") == "model-00001-of-00002.safetensors"
    assert check_path("p", "sub/dir/tok\u00e9.json") == "sub/dir/tok\u00e9.json"
    check_path("p", "train.jsonl", nested=False)
    for bad in ("a/b.jsonl", ".hidden"):
        with pytest.raises(InvalidArgument):
            check_path("p", bad, nested=False)


def test_field_limits_name_the_field() -> None:
    cases: list[tuple[Any, str]] = [
        (lambda: limits.check_description("description", "x" * 2049), "description"),
        (lambda: limits.check_labels("tags", {f"k{i}": "v" for i in range(65)}), "tags"),
        (lambda: limits.check_labels("tags", {"Bad Key": "v"}), "tags['Bad Key']"),
        (lambda: limits.check_labels("tags", {"k": "v" * 257}), "tags['k']"),
        (lambda: limits.check_request_id("request_id", "../../etc"), "request_id"),
        (lambda: limits.check_metrics("metrics", {"bad name": 1.0}), "metrics['bad name']"),
        (lambda: limits.check_json("config", {"a": "x" * (64 << 10)}), "config"),
        (lambda: limits.check_json("config", _nested(40)), "config"),
        (lambda: limits.check_number("rate", float("nan"), 0, 1), "rate"),
        (lambda: limits.parse_number("n", "\u00b2"), "n"),
        (lambda: limits.check_text("x", "a\x00b"), "x"),
        (lambda: limits.check_enum("format", 99, range(7)), "format"),
    ]
    for check, field in cases:
        with pytest.raises(InvalidArgument) as e:
            check()
        assert e.value.violations[0].field == field


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_quote_never_echoes_a_whole_input() -> None:
    assert limits.quote("short") == "'short'"
    long = limits.quote("z" * 100_000)
    assert len(long) < 120 and "100000 characters" in long


def test_page_tokens_round_trip_and_refuse_anything_else() -> None:
    token = paging.encode_token("alias-history", 41, "acme/m/prod")
    assert paging.decode_int_token(token, "alias-history", "acme/m/prod", hi=41) == 41
    assert paging.decode_token("", "alias-history") is None
    refused = ["1" + "0" * 20, "\u00b2", "!!!", "x" * 600, paging.encode_token("models", 3, "acme/m/prod"),
               paging.encode_token("alias-history", -1, "acme/m/prod"), paging.encode_token("alias-history", True, ""),
               paging.encode_token("alias-history", 41, "acme/m/canary")]
    for bad in refused:
        with pytest.raises(InvalidArgument) as e:
            paging.decode_int_token(bad, "alias-history", "acme/m/prod", hi=41)
        assert e.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument):  # well formed, but above what exists
        paging.decode_int_token(paging.encode_token("alias-history", 42, "acme/m/prod"), "alias-history",
                                "acme/m/prod", hi=41)


def test_a_page_budget_always_takes_one_record_then_stops_at_its_bytes() -> None:
    budget = paging.PageBudget(max_bytes=1000)
    assert budget.take({"x": "y" * 5000})  # one record always fits
    assert not budget.take({"x": "y"})
    small = paging.PageBudget(max_bytes=1000)
    assert sum(small.take({"x": "y" * 90}) for _ in range(20)) == 10


def test_the_budget_stops_a_loop_in_a_worker_thread() -> None:
    """A thread doing a call's work sees the call's budget (copied context) and stops at the
    deadline, or as soon as the call ended."""
    import asyncio

    steps: list[int] = []

    def loop() -> None:
        for i in range(10_000):
            deadline.check("test loop")
            steps.append(i)
            time.sleep(0.01)

    async def call(timeout: float, end_after: float | None) -> type[BaseException] | None:
        budget = deadline.begin(timeout)
        if end_after is not None:
            asyncio.get_running_loop().call_later(end_after, budget.end)
        try:
            await asyncio.to_thread(loop)
        except DeadlineExceeded as e:
            return type(e)
        return None

    started = time.monotonic()
    assert asyncio.run(call(0.2, None)) is DeadlineExceeded
    assert time.monotonic() - started < 1.0 and 5 < len(steps) < 50
    steps.clear()
    assert asyncio.run(call(60, 0.2)) is DeadlineExceeded and len(steps) < 50
    deadline.check()  # outside a call: nothing to stop


class FakeIndex:
    """Just the reads ``listing`` makes, over versions with big records."""

    def __init__(self, versions: int, record_bytes: int) -> None:
        self.docs = [{"name": f"tenants/acme/models/m/versions/{n}", "version": n, "state": "ready",
                      "config": {"blob": "x" * record_bytes}} for n in range(versions, 0, -1)]
        self.looked = 0

    def scan_versions(self, tenant: str, model: str, below: int | None, limit: int) -> list[dict[str, Any]]:
        start = 0 if below is None else max(0, len(self.docs) - below + 1)  # docs are newest first
        out = [dict(d) for d in self.docs[start:start + limit]]
        self.looked += len(out)
        return out

    def deployments(self, tenant: str, model: str, number: int) -> list[str]:
        return []


def test_a_version_page_stops_at_its_byte_budget_and_resumes_exactly() -> None:
    index = FakeIndex(40, 256 << 10)  # 40 records of 256 KiB: 10 MiB, more than one page's 4 MiB
    seen: list[int] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = listing.native_page(index, "acme", "m", 1000, token, lambda d, m: True, "scope")  # type: ignore[arg-type]
        assert sum(paging.weigh(d) for d in page) <= paging.MAX_PAGE_BYTES + (256 << 10)
        seen += [d["version"] for d in page]
        pages += 1
        if token is None:
            break
    assert seen == list(range(40, 0, -1)) and pages >= 3


def test_a_page_that_matches_nothing_looks_at_a_bounded_number_of_entries() -> None:
    index = FakeIndex(30_000, 10)
    page, token = listing.native_page(index, "acme", "m", 10, None, lambda d, m: False, "scope")  # type: ignore[arg-type]
    assert page == [] and token is not None and index.looked <= listing.MAX_LOOKED_AT + 1000
    with pytest.raises(InvalidArgument):
        listing.native_page(index, "acme", "m", 10, token, lambda d, m: False, "another query")  # type: ignore[arg-type]


def test_messages_leave_without_addresses_and_cut() -> None:
    from pylon_services.runtime.errors import scrub

    for text in ("failed to connect to all addresses; last error: ipv4:10.0.0.7:50051: refused",
                 "Error 111 connecting to 10.1.2.3:6379.", "GET http://seaweed:8333/bucket/key failed",
                 "peer [fe80::1]:443 closed"):
        assert not any(a in scrub(text) for a in ("10.0.0.7", "10.1.2.3", "seaweed:8333", "fe80::1")), scrub(text)
    kept = "parts[2]: stored bytes differ; version 1.2.3 of files[a:b]"
    assert scrub(kept) == kept
    assert len(scrub("x" * 100_000)) == 1024


def test_a_task_a_call_starts_can_outlive_it() -> None:
    """Tasks copy their creator's context, budget included; ``detach`` frees one (an operation
    a commit hands to the runner must not stop when the commit's call ends)."""
    import asyncio

    async def main() -> None:
        budget = deadline.begin(60)

        async def background() -> None:
            deadline.detach()
            await asyncio.sleep(0.01)
            deadline.check()  # the call below has ended; this task goes on

        task = asyncio.create_task(background())
        budget.end()
        await task
        with pytest.raises(DeadlineExceeded):
            deadline.check()

    asyncio.run(main())
