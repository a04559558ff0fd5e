"""A deployment shared across tenants, through the real gateway (gRPC and the OpenAI-compatible
HTTP API with the stock ``openai`` client), registry, scheduler and an engine replica on Ray:
acme owns the deployment and shares it with globex; initech is not shared. The shared tenant
serves and lists it, pays for its requests with its own limits and shows in the metrics as
itself; everything else stays acme's; bad sharing lists are refused naming the field; sharing
changes under compare-and-swap; revoking or deleting hides it again; the CLI's deploy
--share-with, share and get."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

import pylon
from pylon.cli import app
from tests.integration.test_gateway_serving import chat_model_dir
from tests.integration.test_openai_http import raw
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
DEPLOYMENT = "gw-shared"
FULL = f"tenants/acme/deployments/{DEPLOYMENT}"
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def shared(tenant_clients: dict[str, Any], admin_client: Any, platform: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    acme = tenant_clients["acme"]
    mv = acme.models.register(DEPLOYMENT, str(chat_model_dir(tmp_path_factory.mktemp("share") / "m")))
    dep = acme.deployments.deploy(DEPLOYMENT, f"models:/{DEPLOYMENT}/versions/{mv.version}", shared_with=["globex"],
                                  timeout=240)
    _, token = admin_client.admin.create_key("initech", "editor", "not shared with")
    initech = pylon.Client(platform.addresses["gateway"], token)
    base = f"http://127.0.0.1:{platform.servers['gateway'].parts.extra['http'].port}/v1"
    yield {"dep": dep, "base": base, "acme": acme, "globex": tenant_clients["globex"], "initech": initech}
    initech.close()
    with contextlib.suppress(pylon.NotFoundError):
        acme.deployments.delete(DEPLOYMENT)


def _cli(platform: Any, token: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["--address", platform.addresses["gateway"], "--token", token, *args])


def _openai(base: str, client: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=client.token, max_retries=0)


def _served(base: str, client: Any) -> list[str]:
    """The deployments a tenant's /v1/models lists, by their ids there."""
    status, _, body = raw(base, "/models", None, client.token)
    assert status == 200
    return [m["id"] for m in body["data"]]


def _requests(tenant: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("pylon_gateway_requests_total",
                                     {"deployment": FULL, "tenant": tenant, "code": "OK"}) or 0.0


def test_the_shared_tenant_serves_it_over_grpc_and_http_as_itself(shared):
    acme, globex, base = shared["acme"], shared["globex"], shared["base"]
    assert shared["dep"].shared_with == ["globex"] and acme.deployments.get(DEPLOYMENT).shared_with == ["globex"]
    before = _requests("globex")
    owners = acme.generate(DEPLOYMENT, "The quick brown", max_tokens=6, temperature=0)
    theirs = globex.generate(FULL, "The quick brown", max_tokens=6, temperature=0)
    assert (theirs.text, theirs.deployment) == (owners.text, FULL)
    assert globex.chat(FULL, MESSAGES, max_tokens=4).completion_tokens > 0  # the owner's chat template
    client = _openai(base, globex)
    whole = client.completions.create(model=FULL, prompt="The quick brown", max_tokens=6, temperature=0)
    assert whole.choices[0].text == owners.text
    streamed = client.chat.completions.create(model=FULL, messages=MESSAGES, max_tokens=4, stream=True)  # type: ignore[arg-type]
    assert any(c.choices and c.choices[0].delta.content for c in streamed)
    # counted as globex's, not acme's (a stream's count lands once the server has ended it)
    wait_for(lambda: _requests("globex") - before == 4, 10, "globex's 4 requests to be counted")
    assert FULL in [m.deployment for m in globex.deployments.models()]
    listed = next(m for m in raw(base, "/models", None, globex.token)[2]["data"] if m["id"] == FULL)
    assert listed["owned_by"] == "acme" and listed["ready"] is True
    assert DEPLOYMENT in _served(base, acme)  # the owner lists it by its bare id, as before


def test_everything_else_stays_the_owners(shared):
    globex, initech, base = shared["globex"], shared["initech"], shared["base"]
    with pytest.raises(pylon.NotFoundError) as missing:
        initech.generate("tenants/acme/deployments/no-such", "x", max_tokens=1)
    with pytest.raises(pylon.NotFoundError) as hidden:  # not shared: as if it did not exist
        initech.generate(FULL, "x", max_tokens=1)
    assert hidden.value.message.replace(DEPLOYMENT, "no-such") == missing.value.message
    status, _, body = raw(base, "/completions", {"model": FULL, "prompt": "x", "max_tokens": 1}, initech.token)
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert FULL not in _served(base, initech) and FULL not in [m.deployment for m in initech.deployments.models()]
    with pytest.raises(pylon.NotFoundError):
        globex.generate(DEPLOYMENT, "x", max_tokens=1)  # a bare id is the caller's own tenant's
    for call in (lambda: globex.deployments.get(FULL), lambda: globex.deployments.scale(FULL, 2),
                 lambda: globex.deployments.share(FULL, ["globex"]), lambda: globex.deployments.delete(FULL),
                 lambda: initech.deployments.get(FULL)):
        with pytest.raises(pylon.NotFoundError):
            call()


def test_the_caller_pays_with_its_own_limits(shared, admin_client, redis_client):
    acme, globex = shared["acme"], shared["globex"]
    try:
        admin_client.admin.set_serving_limits("globex", requests_per_min=1)
        globex.generate(FULL, "The quick", max_tokens=2)
        with pytest.raises(pylon.ResourceExhaustedError, match="tenant requests/min"):
            globex.generate(FULL, "The quick", max_tokens=2)
        acme.generate(DEPLOYMENT, "The quick", max_tokens=2)  # the owner's limits are its own
        acme.generate(DEPLOYMENT, "The quick", max_tokens=2)
        assert redis_client.exists("pylon:quota:{globex}:tenant:rpm")
    finally:
        admin_client.admin.set_serving_limits("globex")
        for key in redis_client.scan_iter("pylon:quota:{globex}:*"):
            redis_client.delete(key)


def test_bad_sharing_lists_are_refused_naming_the_field(shared, platform):
    acme = shared["acme"]
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.deployments.deploy("gw-bad-share", "models:/gw-shared/versions/1",
                                shared_with=["Bad!", "acme", "globex", "globex", "*"], wait=False)
    assert [v.field for v in e.value.violations] == ["deployment.shared_with[0]", "deployment.shared_with[1]",
                                                     "deployment.shared_with[3]"]
    with pytest.raises(pylon.NotFoundError):
        acme.deployments.get("gw-bad-share")  # nothing was created
    for values, field in ((["acme"], "shared_with[0]"), ([f"t{i}" for i in range(65)], "shared_with"),
                          (["x" * 64], "shared_with[0]")):
        with pytest.raises(pylon.InvalidArgumentError) as e:
            acme.deployments.share(DEPLOYMENT, values)
        assert [v.field for v in e.value.violations] == [field]
    assert acme.deployments.get(DEPLOYMENT).shared_with == ["globex"]
    res = _cli(platform, acme.token, "deployments", "deploy", "gw-bad-share", "models:/gw-shared/versions/1",
               "--share-with", "globex", "--share-with", "globex", "--no-wait")
    assert isinstance(res.exception, pylon.InvalidArgumentError)
    assert [v.field for v in res.exception.violations] == ["deployment.shared_with[1]"]


def test_sharing_changes_under_compare_and_swap_and_revoking_hides_it(shared, platform):
    acme, globex, initech, base = shared["acme"], shared["globex"], shared["initech"], shared["base"]
    dep = acme.deployments.get(DEPLOYMENT)
    both = acme.deployments.share(DEPLOYMENT, ["globex", "initech"], etag=dep.etag)
    assert both.shared_with == ["globex", "initech"] and both.etag != dep.etag
    assert initech.generate(FULL, "The quick", max_tokens=2).completion_tokens == 2
    with pytest.raises(pylon.AbortedError):
        acme.deployments.share(DEPLOYMENT, [], etag=dep.etag)  # stale: nothing changes
    assert acme.deployments.get(DEPLOYMENT).shared_with == ["globex", "initech"]
    acme.deployments.share(DEPLOYMENT, [])
    for client in (globex, initech):
        with pytest.raises(pylon.NotFoundError):
            client.generate(FULL, "The quick", max_tokens=2)
        assert FULL not in _served(base, client)
    status, _, _ = raw(base, "/chat/completions", {"model": FULL, "messages": MESSAGES}, globex.token)
    assert status == 404
    res = _cli(platform, acme.token, "deployments", "share", DEPLOYMENT, "--tenant", "*", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["shared_with"] == ["*"]  # every tenant
    assert initech.generate(FULL, "The quick", max_tokens=2).completion_tokens == 2
    res = _cli(platform, acme.token, "deployments", "get", DEPLOYMENT)
    assert res.exit_code == 0 and "shared with: *" in res.stdout
    assert FULL in _served(base, globex) and FULL in _served(base, initech)


def test_a_deleted_shared_deployment_leaves_every_list(shared):
    """Last: it deletes the module's deployment."""
    acme, globex, initech = shared["acme"], shared["globex"], shared["initech"]
    assert FULL in [m.deployment for m in initech.deployments.models()]
    acme.deployments.delete(DEPLOYMENT)
    for client in (globex, initech):
        assert FULL not in [m.deployment for m in client.deployments.models()]
        with pytest.raises(pylon.NotFoundError):
            client.generate(FULL, "The quick", max_tokens=2)
