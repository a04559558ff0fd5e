"""Fine-tuning from a registered model: the scheduler resolves ``base_model`` (a models:/ URI)
through the registry at submit, as the caller, pins the exact version, and the trainer starts
from its weights; the new version's lineage names the base."""

from __future__ import annotations

import os

import pytest

import pylon

pytestmark = pytest.mark.integration
CFG = {"steps": 20, "batch_size": 4, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32, "warmup": 0,
       "log_every": 5}


def _base_model_dir(tmp_path, corpus: bytes) -> str:
    from pylon_services.trainers.tiny_gpt import TrainConfig, train

    result = train(corpus, TrainConfig(**{**CFG, "steps": 30}, device="cpu"))
    root = tmp_path / "base"
    root.mkdir()
    for name, data in result.files.items():
        (root / name).write_bytes(data)
    return str(root)


def test_fine_tune_from_an_alias_pins_the_version_and_records_lineage(tenant_clients, tmp_path):
    from pylon.demo import build_corpus

    acme = tenant_clients["acme"]
    text = build_corpus()[:60_000]
    (tmp_path / "corpus.txt").write_text(text)
    ds = acme.datasets.upload(str(tmp_path / "corpus.txt"), "ft-corpus", format="text")
    base = acme.models.register("ft-base", _base_model_dir(tmp_path, text.encode()), format="pylon_gpt")
    acme.models.set_alias("ft-base", "prod", base.version)

    job = acme.jobs.submit({"trainer": {"trainer": "tiny-gpt", "datasets": [ds.name], "config": CFG,
                                        "base_model": "models:/ft-base@prod"}})
    assert job.spec["trainer"]["base_model_version"] == base.name  # pinned at submit
    job = acme.jobs.wait(job.name, timeout=300)
    assert job.state == "succeeded", job.message
    logs = "\n".join(acme.jobs.logs(job.name))
    assert f"fine-tuning {base.name}" in logs
    tuned = acme.models.register("ft-tuned", source_uri=job.output_uri, job=job.name, datasets=[ds.name],
                                 base_model=job.spec["trainer"]["base_model_version"])
    edges = {(e.source, e.target) for e in acme.models.lineage("ft-tuned", tuned.version).edges}
    assert (base.name, job.output_uri) in edges or any(src == base.name for src, _ in edges)


def test_bad_base_models_are_rejected_at_submit(tenant_clients, tmp_path):
    acme, globex = tenant_clients["acme"], tenant_clients["globex"]
    (tmp_path / "w.bin").write_bytes(os.urandom(64))
    acme.models.register("ft-not-gpt", [str(tmp_path / "w.bin")], format="other")
    spec = {"trainer": {"trainer": "tiny-gpt", "datasets": [], "config": CFG}}
    for uri, code in (("models:/ft-missing@prod", "INVALID_ARGUMENT"), ("ft-base@prod", "INVALID_ARGUMENT"),
                      ("models:/ft-not-gpt/latest", "INVALID_ARGUMENT")):
        with pytest.raises(pylon.PylonError) as err:
            acme.jobs.submit({**spec, "trainer": {**spec["trainer"], "base_model": uri}})
        assert err.value.code.name == code and "base_model" in str(err.value), uri
    with pytest.raises(pylon.PylonError) as err:  # another tenant's model does not resolve for globex
        globex.jobs.submit({**spec, "trainer": {**spec["trainer"], "base_model": "models:/ft-not-gpt/latest"}})
    assert err.value.code.name == "INVALID_ARGUMENT" and "not found" in str(err.value)
