"""The gateway's OpenAI-compatible HTTP API, called with the stock ``openai`` client (and raw HTTP
where the client hides what is checked) against the real gateway and an engine replica on Ray:
completions and chat, streamed (SSE, include_usage) and whole, all n choices, /v1/models, the
same answers as the gRPC API, OpenAI error bodies with the statuses gRPC's codes map to, and a
client that hangs up mid-stream aborting its request on the replica."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.integration.test_gateway_serving import chat_model_dir, engine_stats
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
DEPLOYMENT = "gw-http"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Größe of the café?"}]


@pytest.fixture(scope="module")
def served(tenant_clients: dict[str, Any], platform: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    acme = tenant_clients["acme"]
    mv = acme.models.register(DEPLOYMENT, str(chat_model_dir(tmp_path_factory.mktemp("http") / "m")))
    acme.models.set_alias(DEPLOYMENT, "prod", mv.version)
    dep = acme.deployments.deploy(DEPLOYMENT, f"models:/{DEPLOYMENT}@prod", timeout=240)
    base = f"http://127.0.0.1:{platform.servers['gateway'].parts.extra['http'].port}/v1"
    yield {"dep": dep, "base": base, "client": openai.OpenAI(base_url=base, api_key=acme.token, max_retries=0)}
    acme.deployments.delete(DEPLOYMENT)


def raw(base: str, path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, dict[str, Any], Any]:
    """(status, headers, JSON body) of one HTTP request, errors included."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_completions_whole_and_streamed_match_the_grpc_api(tenant_clients, served):
    client = served["client"]
    grpc_answer = tenant_clients["acme"].generate(DEPLOYMENT, "The quick brown", max_tokens=8, temperature=0)
    whole = client.completions.create(model=DEPLOYMENT, prompt="The quick brown", max_tokens=8, temperature=0)
    assert whole.object == "text_completion" and whole.model == DEPLOYMENT
    assert whole.choices[0].text == grpc_answer.text and whole.choices[0].finish_reason == grpc_answer.finish_reason
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (grpc_answer.prompt_tokens,
                                                                          grpc_answer.completion_tokens)
    chunks = list(client.completions.create(model=f"{DEPLOYMENT}@prod", prompt="The quick brown", max_tokens=8,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == grpc_answer.text
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == grpc_answer.completion_tokens
    assert all(c.usage is None for c in client.completions.create(
        model=DEPLOYMENT, prompt="The quick brown", max_tokens=3, stream=True))  # usage only when asked


def test_all_n_choices_come_back(served):
    client = served["client"]
    whole = client.completions.create(model=DEPLOYMENT, prompt="The quick", max_tokens=5, n=3, seed=1,
                                      extra_body={"ignore_eos": True})
    assert [c.index for c in whole.choices] == [0, 1, 2] and whole.usage.completion_tokens == 15
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(model=DEPLOYMENT, prompt="The quick", max_tokens=5, n=3, seed=1,
                                           stream=True, extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {c.index: c.text for c in whole.choices}


def test_chat_whole_and_streamed_match_the_grpc_chat(tenant_clients, served):
    client = served["client"]
    grpc_answer = tenant_clients["acme"].chat(DEPLOYMENT, MESSAGES, max_tokens=8, temperature=0)
    whole = client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, max_tokens=8, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == grpc_answer.text
    assert whole.usage.prompt_tokens == grpc_answer.prompt_tokens
    chunks = list(client.chat.completions.create(model=f"{DEPLOYMENT}@prod", messages=MESSAGES,
                                                 max_completion_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == grpc_answer.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == grpc_answer.finish_reason
    assert chunks[-1].usage.total_tokens == grpc_answer.prompt_tokens + grpc_answer.completion_tokens


def test_models_lists_the_tenants_deployments(tenant_clients, served, platform):
    ids = {m.id for m in served["client"].models.list()}
    assert DEPLOYMENT in ids
    globex = openai.OpenAI(base_url=served["base"], api_key=tenant_clients["globex"].token, max_retries=0)
    assert DEPLOYMENT not in {m.id for m in globex.models.list()}


def test_errors_are_openai_bodies_with_the_mapped_status(tenant_clients, served):
    client, base, acme = served["client"], served["base"], tenant_clients["acme"]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-deployment", prompt="hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{DEPLOYMENT}@no-such-alias", messages=MESSAGES)
    for field, value in (("temperature", -1), ("top_p", 2), ("n", 17), ("max_tokens", 9000), ("temperature", "hot"),
                         ("stop", 5), ("logit_bias", {"1": 5})):
        status, _, body = raw(base, "/completions", {"model": DEPLOYMENT, "prompt": "hi", field: value}, acme.token)
        assert (status, body["error"]["param"], body["error"]["type"]) == (400, field, "invalid_request_error"), body
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=DEPLOYMENT, messages=[{"role": "wizard", "content": "hi"}])
    assert e.value.body["param"] == "messages[0].role"
    status, _, body = raw(base, "/completions", {"model": DEPLOYMENT, "prompt": "x " * 3000, "max_tokens": 4000},
                          acme.token)  # the engine's own refusal: the prompt and completion exceed the context
    assert status == 400 and body["error"]["param"] in ("max_tokens", "prompt"), body
    for token in (None, "pyl_nope_bad-secret"):
        status, _, body = raw(base, "/models", None, token)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="pyl_nope_bad-secret", max_retries=0).models.list()
    status, _, body = raw(base, "/completions", {"model": f"tenants/acme/deployments/{DEPLOYMENT}", "prompt": "hi"},
                          tenant_clients["globex"].token)
    assert status == 404, body  # another tenant's deployment reads as missing
    status, _, body = raw(base, "/completions", {"model": DEPLOYMENT, "prompt": "hi"}, tenant_clients["viewer"].token)
    assert status == 403 and body["error"]["type"] == "permission_error"


def test_a_client_that_hangs_up_mid_stream_aborts_the_request(tenant_clients, served):
    acme = tenant_clients["acme"]
    before = engine_stats(acme, DEPLOYMENT)
    stream = served["client"].completions.create(model=DEPLOYMENT, prompt="The quick brown fox", max_tokens=4000,
                                                 temperature=0, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    assert engine_stats(acme, DEPLOYMENT).running == 1
    stream.close()  # closes the connection: the SSE client is gone
    after = wait_for(lambda: (s := engine_stats(acme, DEPLOYMENT)).running == 0 and s.kv_blocks_used == 0 and s,
                     30, "the replica to drop the abandoned request")
    assert after.generation_tokens - before.generation_tokens < 4000


def test_the_http_server_starts_and_stops_with_the_gateways_hooks(platform, tenant_clients):
    import redis.asyncio as aioredis

    from pylon_services.gateway.server import build
    from pylon_services.runtime.settings import Settings

    settings = Settings(**{**platform.base, "shutdown_grace_s": 1.0}, port=0)

    async def start() -> Any:
        redis = aioredis.from_url(settings.redis_url)
        parts = await build(settings, redis)
        await parts.on_start()
        return parts, redis

    parts, redis = platform.lt.run(start())
    base = f"http://127.0.0.1:{parts.extra['http'].port}/v1"
    try:
        status, headers, body = raw(base, "/models", None, tenant_clients["acme"].token)
        assert status == 200 and body["object"] == "list" and headers.get("x-request-id")
        assert raw(base, "/no-such-route", None, tenant_clients["acme"].token)[0] == 404
    finally:
        platform.lt.run(parts.on_stop())
        platform.lt.run(redis.aclose())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/models", timeout=5)
