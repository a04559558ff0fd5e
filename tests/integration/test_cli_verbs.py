"""The SDK and CLI verbs as a user runs them against the real platform: API keys listed and
revoked, lists that follow page tokens lazily, and ``--json`` output that is exactly one JSON
document on stdout."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

import pylon
from pylon.cli import app
from tests.support.platform import ADMIN_KEY
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _cli(platform: Any, token: str, *args: str) -> Any:
    """Run `pylon ARGS`; returns the result with stdout and stderr apart."""
    return CliRunner().invoke(app, ["--address", platform.addresses["gateway"], "--token", token, *args])


def _auth_ttl_s() -> float:
    from pylon_services.runtime.settings import Settings

    return float(Settings().auth_cache_ttl_s)


def test_keys_are_listed_across_pages_and_a_deleted_key_stops_working(admin_client, platform):
    mine = {admin_client.admin.create_key("keyring", "viewer", f"k{i}")[0] for i in range(3)}
    for i in range(40):  # other tenants' keys interleave with these in key-id order
        admin_client.admin.create_key(f"noise{i}", "viewer")
    listed = admin_client.admin.list_keys("keyring", page_size=1)  # many short or empty pages
    keys = list(listed)
    assert {k.name for k in keys} == mine and listed.next_page_token == ""
    assert {(k.tenant, k.role) for k in keys} == {("keyring", "viewer")} and all(k.create_time for k in keys)
    assert len(list(admin_client.admin.list_keys(limit=2))) == 2
    with pytest.raises(pylon.InvalidArgumentError, match="page_token"):
        _raw_page(admin_client, "not a token", 1)

    name, token = admin_client.admin.create_key("keyring", "viewer", "to revoke")
    with pylon.Client(platform.addresses["gateway"], token) as c:
        assert c.admin.whoami().tenant == "keyring"
        list(c.jobs.list(limit=1))  # the scheduler now caches this key's lookup
        admin_client.admin.delete_key(name.split("/", 1)[1])  # the bare key id works too

        def refused(call: Any) -> bool:
            try:
                call()
            except pylon.UnauthenticatedError:
                return True
            return False

        # the registry, which revoked it, refuses it at once (its cached lookup was dropped) ...
        assert refused(c.admin.whoami)
        # ... every other service once its cached lookup expires (PYLON_AUTH_CACHE_TTL_S)
        wait_for(lambda: refused(lambda: list(c.jobs.list(limit=1))), _auth_ttl_s() + 5, "the scheduler to refuse it")
    assert name not in {k.name for k in admin_client.admin.list_keys("keyring")}
    with pytest.raises(pylon.NotFoundError):
        admin_client.admin.delete_key(name)


def _raw_page(client: pylon.Client, token: str, size: int) -> tuple[list[Any], str]:
    from pylon.admin.v1 import admin_pb2

    resp = client.call(client.admin_stub.ListApiKeys, admin_pb2.ListApiKeysRequest(page_size=size, page_token=token))
    return list(resp.api_keys), resp.next_page_token


def test_cli_lists_and_revokes_keys(admin_client, platform):
    made = json.loads(_cli(platform, ADMIN_KEY, "admin", "create-key", "clikeys", "--json").stdout)
    res = _cli(platform, ADMIN_KEY, "admin", "list-keys", "--tenant", "clikeys", "--json")
    assert res.exit_code == 0, res.output
    assert [k["name"] for k in json.loads(res.stdout)] == [made["name"]]
    assert len(json.loads(_cli(platform, ADMIN_KEY, "admin", "list-keys", "--limit", "1", "--json").stdout)) == 1
    res = _cli(platform, ADMIN_KEY, "admin", "delete-key", made["name"], "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == {"deleted": made["name"]}
    assert json.loads(_cli(platform, ADMIN_KEY, "admin", "list-keys", "--tenant", "clikeys", "--json").stdout) == []
    viewer = _cli(platform, made["token"], "admin", "whoami", "--json")
    assert viewer.exit_code != 0 and isinstance(viewer.exception, pylon.UnauthenticatedError)


def test_jobs_list_follows_pages_lazily(tenant_clients):
    acme = tenant_clients["acme"]
    for i in range(3):
        acme.jobs.submit({"command": {"argv": ["true"]}}, request_id=f"paging-{i}")
    everything = [j.name for j in acme.jobs.list(page_size=2)]
    assert len(everything) == len(set(everything)) >= 3  # every page, not only the first
    assert [j.name for j in acme.jobs.list(page_size=2, limit=3)] == everything[:3]


def test_json_output_is_one_document_on_stdout(tenant_clients, platform, tmp_path):
    token = tenant_clients["acme"].token
    spec = tmp_path / "job.yaml"
    spec.write_text("command:\n  argv: [printf, 'log-%s\\n', one, two]\n")  # the log lines are not in the spec
    res = _cli(platform, token, "jobs", "submit", str(spec), "--json")
    assert res.exit_code == 0, res.output
    job = json.loads(res.stdout)  # the logs went to stderr
    assert job["state"] == "succeeded" and "log-one" in res.stderr and "log-one" not in res.stdout
    for args in (("jobs", "list", "--limit", "2"), ("jobs", "get", job["name"]), ("jobs", "metrics", job["name"]),
                 ("datasets", "list"), ("models", "list"), ("deployments", "list"), ("queues", "list"),
                 ("cluster",), ("admin", "whoami")):
        res = _cli(platform, token, *args, "--json")
        assert res.exit_code == 0, (args, res.output)
        json.loads(res.stdout)
    assert len(json.loads(_cli(platform, token, "jobs", "list", "--limit", "2", "--json").stdout)) == 2


def test_models_create_update_and_resolve(tenant_clients, platform, tmp_path):
    acme = tenant_clients["acme"]
    made = acme.models.create("verbs-model", description="first", tags={"team": "nlp"})
    assert (made.description, made.tags) == ("first", {"team": "nlp"})
    changed = acme.models.update("verbs-model", description="second", etag=made.etag)
    assert (changed.description, changed.tags) == ("second", {"team": "nlp"})  # tags left as they were
    with pytest.raises(pylon.AbortedError):
        acme.models.update("verbs-model", tags={}, etag=made.etag)
    (tmp_path / "w.bin").write_bytes(b"weights")
    v = acme.models.register("verbs-model", str(tmp_path / "w.bin"), format="other")
    acme.models.set_alias("verbs-model", "prod", v.version)
    res = _cli(platform, acme.token, "models", "resolve", "models:/verbs-model@prod", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["name"] == v.name
    res = _cli(platform, acme.token, "models", "update", "verbs-model", "--tag", "team=vision", "--json")
    assert json.loads(res.stdout)["tags"] == {"team": "vision"}
