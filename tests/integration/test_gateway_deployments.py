"""Deployments through the real gateway, scheduler, registry and Ray: scaling replica jobs up and
down (with compare-and-swap on the etag), a Hugging Face Llama version served and streamed, and a
deployment whose replicas cannot load its model turning FAILED instead of pending forever."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pylon
from pylon.cli import app
from tests.support.hf_models import trained_format_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _tiny_llama(directory: Path) -> str:
    """A randomly initialised tiny HF Llama directory, its BPE tokenizer trained as ingest trains one."""
    return trained_format_dir(directory, extra_line="café → thé", vocab_size=320, corpus_chars=30_000, lines=300,
                              hidden_size=32, layers=1)


def _jobs(dep: Any) -> list[str]:
    return [r.job for r in dep.replica_status]


def test_scale_up_and_down_through_the_scheduler(tenant_clients, platform, tmp_path):
    acme = tenant_clients["acme"]
    mv = acme.models.register("gw-scale", _tiny_llama(tmp_path / "m"))
    dep = acme.deployments.deploy("gw-scale", f"models:/gw-scale/versions/{mv.version}", timeout=240)
    try:
        assert (dep.state, dep.replicas, len(_jobs(dep))) == ("ready", 1, 1)
        first, etag = _jobs(dep)[0], dep.etag
        up = acme.deployments.scale("gw-scale", 2, etag=etag)
        assert up.replicas == 2 and _jobs(up)[0] == first and len(set(_jobs(up))) == 2 and up.etag != etag
        extra = _jobs(up)[1]
        assert acme.jobs.get(extra).spec["engine"]["deployment"] == dep.name
        both = wait_for(lambda: (d := acme.deployments.get("gw-scale")).state == "ready"
                        and all(r.ready for r in d.replica_status) and d, 240, "both replicas to serve")
        assert [r.job for r in both.replica_status] == [first, extra]
        with pytest.raises(pylon.AbortedError, match="changed since etag"):
            acme.deployments.scale("gw-scale", 1, etag=etag)  # stale: the scale-up changed it
        for bad in (0, 17):
            with pytest.raises(pylon.InvalidArgumentError) as e:
                acme.deployments.scale("gw-scale", bad)
            assert [v.field for v in e.value.violations] == ["replicas"]
        down = acme.deployments.scale("gw-scale", 1, etag=both.etag)
        assert (down.replicas, _jobs(down)) == (1, [first])
        assert wait_for(lambda: acme.jobs.get(extra).state == "cancelled", 60, "the extra replica's job to stop")
        assert acme.jobs.get(first).state == "running"
        assert acme.generate("gw-scale", "hello", max_tokens=4, seed=0).completion_tokens == 4
        res = CliRunner().invoke(app, ["--address", platform.addresses["gateway"], "--token", acme.token,
                                       "deployments", "scale", "gw-scale", "2", "--json"])
        assert res.exit_code == 0, res.output
        again = acme.deployments.get("gw-scale")
        assert json.loads(res.stdout)["replica_status"][1]["job"] == _jobs(again)[1]
        assert _jobs(again)[0] == first and _jobs(again)[1] not in (first, extra)  # a new slot, not the old job
    finally:
        acme.deployments.delete("gw-scale")
    assert all(acme.jobs.get(j).state == "cancelled" for j in [first, *_jobs(again)[1:]])
    with pytest.raises(pylon.NotFoundError):
        acme.deployments.get("gw-scale")


def test_a_hugging_face_llama_version_streams_through_the_gateway(tenant_clients, tmp_path):
    import torch
    import transformers
    from tokenizers import Tokenizer

    acme = tenant_clients["acme"]
    directory = _tiny_llama(tmp_path / "llama")
    mv = acme.models.register("gw-llama", directory)  # the format is detected from the files
    assert mv.format == "hf_transformers"
    dep = acme.deployments.deploy("gw-llama", f"models:/gw-llama/versions/{mv.version}", timeout=240)
    try:
        assert dep.state == "ready"
        prompt = "The café →"
        pieces = list(acme.generate_stream("gw-llama", prompt, max_tokens=12, temperature=0))
        tokenizer = Tokenizer.from_file(f"{directory}/tokenizer.json")
        ids = tokenizer.encode(prompt).ids
        model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
        expected = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
        assert [t for p in pieces for t in p.token_ids] == expected
        assert "".join(p.text for p in pieces) == tokenizer.decode(expected)
        last = pieces[-1]
        assert last.completion_tokens == len(expected) and last.prompt_tokens == len(ids)
        assert last.finish_reason == ("length" if len(expected) == 12 else "stop")
        sampled = acme.generate("gw-llama", prompt, max_tokens=8, temperature=1.0, seed=3)
        assert sampled.text == acme.generate("gw-llama", prompt, max_tokens=8, temperature=1.0, seed=3).text
    finally:
        acme.deployments.delete("gw-llama")


def test_viewer_cannot_scale(tenant_clients):
    with pytest.raises(pylon.PermissionDeniedError):
        tenant_clients["viewer"].deployments.scale("anything", 2)
    with pytest.raises(pylon.NotFoundError):
        tenant_clients["acme"].deployments.scale("no-such-deployment", 2)


def test_replicas_that_cannot_load_the_model_turn_the_deployment_failed(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    (bad / "config.json").write_text("{}")
    mv = acme.models.register("gw-garbage", str(bad), format="hf_transformers")
    t0 = time.monotonic()
    with pytest.raises(pylon.FailedPreconditionError) as e:
        acme.deployments.deploy("gw-garbage", f"models:/gw-garbage/versions/{mv.version}", replicas=2, timeout=240)
    assert time.monotonic() - t0 < 180  # not the deploy timeout: it failed as soon as both replica jobs had
    assert "every replica job ended" in e.value.message and "failed" in e.value.message
    dep = acme.deployments.get("gw-garbage")
    assert dep.state == "failed" and len(_jobs(dep)) == 2
    jobs = [acme.jobs.get(j) for j in _jobs(dep)]
    assert all(j.state == "failed" and j.message for j in jobs)
    assert all(j.retries == 0 for j in jobs)  # a model that cannot load spends no retries
    assert any(j.message in dep.message for j in jobs), dep.message  # the reason, not just "failed"
    acme.deployments.delete("gw-garbage")
