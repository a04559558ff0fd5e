"""GatewayService's serving RPCs through the real gateway, registry, scheduler and an engine replica
on Ray: Generate and Complete with every one of n completions, Chat through the model's chat
template (checked token for token against transformers), a model named as name@alias,
ListModels, the refusals (unknown model, bad parameters, a missing or bad key, another tenant's
deployment), and a caller that cancels its stream aborting the request on the replica."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import pylon
from pylon.engine.v1 import engine_pb2, engine_pb2_grpc
from pylon.gateway.v1 import gateway_pb2
from pylon_services.runtime.settings import Settings
from tests.support.hf_models import build_model_dir
from tests.support.platform import ADMIN_KEY
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
# Llama 3's template shape: special tokens placed by the template, a generation prompt at the end.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
                 "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
                 "{{ '<|begin|>' + m['role'] + '\\n' + m['content'] + eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|begin|>assistant\\n' }}{% endif %}")
DEPLOYMENT = "gw-serve"


def chat_model_dir(directory: Path) -> Path:
    """A random-weight HF Llama with a 4096-token context (long streams to cancel) and a chat template."""
    build_model_dir(directory, max_position_embeddings=4096)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return directory


@pytest.fixture(scope="module")
def served(tenant_clients: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    acme = tenant_clients["acme"]
    directory = chat_model_dir(tmp_path_factory.mktemp("serve") / "m")
    mv = acme.models.register(DEPLOYMENT, str(directory))
    acme.models.set_alias(DEPLOYMENT, "prod", mv.version)
    dep = acme.deployments.deploy(DEPLOYMENT, f"models:/{DEPLOYMENT}@prod", timeout=240)
    yield {"dir": directory, "dep": dep, "version": mv}
    acme.deployments.delete(DEPLOYMENT)


def engine_stats(acme: Any, deployment: str) -> engine_pb2.GetStatsResponse:
    """The replica's own GetStats, called directly with the platform's internal key."""
    address = acme.deployments.get(deployment).replica_status[0].address
    with grpc.insecure_channel(address) as channel:
        return engine_pb2_grpc.EngineServiceStub(channel).GetStats(
            engine_pb2.GetStatsRequest(), metadata=(("authorization", f"Bearer {Settings(admin_key=ADMIN_KEY).internal_key}"),),
            timeout=10)


def test_every_one_of_n_completions_passes_through(tenant_clients, served):
    acme = tenant_clients["acme"]
    pieces = list(acme.generate_stream(DEPLOYMENT, "The quick brown", max_tokens=6, temperature=1.0, seed=7, n=3,
                                       ignore_eos=True))
    assert {p.index for p in pieces} == {0, 1, 2}
    streamed = {i: "".join(p.text for p in pieces if p.index == i) for i in range(3)}
    assert all(sum(1 for p in pieces if p.index == i and p.finish_reason == "length") == 1 for i in range(3))
    assert pieces[-1].completion_tokens == 18 and pieces[-1].deployment == served["dep"].name
    whole = acme.generate(DEPLOYMENT, "The quick brown", max_tokens=6, temperature=1.0, seed=7, n=3, ignore_eos=True)
    assert [c.index for c in whole.choices] == [0, 1, 2] and whole.completion_tokens == 18
    assert {c.index: c.text for c in whole.choices} == streamed  # a seed gives the same samples, unary or streamed
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" for c in whole.choices)


def test_a_model_named_by_alias_resolves_to_its_deployment(tenant_clients, served):
    acme = tenant_clients["acme"]
    by_alias = acme.generate(f"{DEPLOYMENT}@prod", "The quick brown", max_tokens=5, temperature=0)
    by_version = acme.generate(f"models:/{DEPLOYMENT}/versions/{served['version'].version}", "The quick brown",
                               max_tokens=5, temperature=0)
    direct = acme.generate(DEPLOYMENT, "The quick brown", max_tokens=5, temperature=0)
    assert by_alias.deployment == by_version.deployment == served["dep"].name
    assert by_alias.text == by_version.text == direct.text
    with pytest.raises(pylon.NotFoundError):
        acme.generate(f"{DEPLOYMENT}@no-such-alias", "x", max_tokens=2)
    with pytest.raises(pylon.NotFoundError):
        acme.generate("no-such-model@prod", "x", max_tokens=2)
    with pytest.raises(pylon.NotFoundError):
        acme.generate("no-such-deployment", "x", max_tokens=2)


def test_chat_goes_through_the_models_chat_template(tenant_clients, served):
    import torch
    import transformers

    acme = tenant_clients["acme"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Größe of the café?"}]
    pieces = list(acme.chat_stream(DEPLOYMENT, messages, max_tokens=8, temperature=0))
    tok = transformers.AutoTokenizer.from_pretrained(served["dir"])
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(served["dir"]).eval()
    expected = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    assert [t for p in pieces for t in p.token_ids] == expected
    assert pieces[-1].prompt_tokens == len(ids)  # the template's special tokens were not added twice
    assert acme.chat(f"{DEPLOYMENT}@prod", messages, max_tokens=8, temperature=0).text == tok.decode(expected)
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.chat(DEPLOYMENT, [{"role": "wizard", "content": "hi"}], max_tokens=2)
    assert [v.field for v in e.value.violations] == ["messages[0].role"]
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.chat(DEPLOYMENT, [], max_tokens=2)
    assert [v.field for v in e.value.violations] == ["messages"]
    with pytest.raises(pylon.InvalidArgumentError, match="chat template refused"):
        acme.chat(DEPLOYMENT, [{"role": "tool", "content": "hi"}], max_tokens=2)  # the template's raise_exception


def test_list_models_shows_the_tenants_deployments_only(tenant_clients, served):
    models = {m.deployment: m for m in tenant_clients["acme"].deployments.models()}
    mine = models[served["dep"].name]
    assert mine.ready and mine.model_version == served["version"].name and mine.model_uri == f"models:/{DEPLOYMENT}@prod"
    assert served["dep"].name not in {m.deployment for m in tenant_clients["globex"].deployments.models()}
    assert tenant_clients["viewer"].deployments.models()  # a read: viewers may list


def test_bad_requests_are_refused_naming_the_field(tenant_clients, served, platform):
    acme = tenant_clients["acme"]
    for kwargs, field in (({"temperature": -1.0}, "sampling.temperature"), ({"top_p": 2.0}, "sampling.top_p"),
                          ({"n": 17}, "sampling.n"), ({"max_tokens": 9000}, "sampling.max_tokens")):
        with pytest.raises(pylon.InvalidArgumentError) as e:
            acme.generate(DEPLOYMENT, "hi", **kwargs)
        assert [v.field for v in e.value.violations] == [field]
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.call(acme.gateway.Complete, gateway_pb2.CompleteRequest(
            deployment=served["dep"].name, model=f"{DEPLOYMENT}@prod", prompt="hi"))
    assert [v.field for v in e.value.violations] == ["deployment"]
    with pytest.raises(pylon.NotFoundError):  # another tenant's deployment reads as missing
        tenant_clients["globex"].generate(served["dep"].name, "hi", max_tokens=2)
    for token in ("", "pyl_nope_bad-secret"):
        with pylon.Client(platform.addresses["gateway"], "unused") as anonymous:
            anonymous.token = token  # "": no authorization metadata at all
            with pytest.raises(pylon.UnauthenticatedError):
                anonymous.generate(DEPLOYMENT, "hi", max_tokens=2)


def test_a_cancelled_stream_aborts_the_request_on_the_replica(tenant_clients, served):
    acme = tenant_clients["acme"]
    before = engine_stats(acme, DEPLOYMENT)
    stream = acme.gateway.Generate(gateway_pb2.GenerateRequest(
        deployment=served["dep"].name, prompt="The quick brown fox",
        sampling=engine_pb2.SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)),
        metadata=acme.metadata(), timeout=120)
    next(stream)
    assert engine_stats(acme, DEPLOYMENT).running == 1
    stream.cancel()
    after = wait_for(lambda: (s := engine_stats(acme, DEPLOYMENT)).running == 0 and s.kv_blocks_used == 0 and s,
                     30, "the replica to drop the cancelled request")
    assert after.generation_tokens - before.generation_tokens < 4000  # ended early, not run to its length
