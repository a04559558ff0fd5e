"""Fine-tuning from a registered model: the scheduler resolves ``base_model`` (a models:/ URI)
through the registry at submit, as the caller, pins the exact version, and the causal-lm trainer
starts from its weights; the new version's lineage names the base."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import pylon

pytestmark = pytest.mark.integration
CFG = {"seq_len": 32, "batch_size": 4, "steps": 4, "warmup": 0, "log_every": 2}


def _base_model_dir(directory: Path, tokenizer_json: str) -> str:
    """An untrained ``tiny``-preset Llama in Hugging Face format with the datasets' tokenizer: the
    trainer only needs a base of the right format and vocabulary, not a trained one."""
    import torch
    from tokenizers import Tokenizer

    from pylon_services.ingest.domain.tokenize import EOS_TOKEN
    from pylon_services.ml.hf import write_hf_model
    from pylon_services.ml.llama import Llama, preset

    tokenizer = Tokenizer.from_str(tokenizer_json)
    model = Llama(preset("tiny", vocab_size=tokenizer.get_vocab_size(), eos_token_id=tokenizer.token_to_id(EOS_TOKEN)))
    model.reset_parameters(torch.Generator().manual_seed(0))
    write_hf_model(directory, model, tokenizer_json=tokenizer_json, eos_token=EOS_TOKEN)
    return str(directory)


def _tokenizer_json(platform: Any, corpus: str) -> str:
    from pylon_services.common.layout import read_tokenization
    from pylon_services.storage.factory import open_store

    store = open_store(platform.base["object_store_url"])
    _, tenant, _, dataset, _, version = corpus.split("/")
    return store.get(read_tokenization(store, tenant, dataset, version, "lm-bpe")["tokenizer_object_key"]).decode()


def test_fine_tune_from_an_alias_pins_the_version_and_records_lineage(tenant_clients, platform, corpus, tmp_path):
    acme = tenant_clients["acme"]
    base = acme.models.register("ft-base", _base_model_dir(tmp_path / "base", _tokenizer_json(platform, corpus)))
    assert base.format == "hf_transformers"
    acme.models.set_alias("ft-base", "prod", base.version)

    job = acme.jobs.submit({"trainer": {"trainer": "causal-lm", "datasets": [corpus], "config": CFG,
                                        "base_model": "models:/ft-base@prod"}})
    assert job.spec["trainer"]["base_model_version"] == base.name  # pinned at submit
    job = acme.jobs.wait(job.name, timeout=300)
    assert job.state == "succeeded", (job.message, job.last_log_lines)
    logs = "\n".join(acme.jobs.logs(job.name))
    assert f"fine-tuning {base.name}" in logs
    tuned = acme.models.register("ft-tuned", source_uri=job.output_uri, job=job.name, datasets=[corpus],
                                 base_model=job.spec["trainer"]["base_model_version"])
    assert tuned.format == "hf_transformers"  # a job's output registers as Hugging Face by default
    edges = {(e.source, e.target) for e in acme.models.lineage("ft-tuned", tuned.version).edges}
    assert (base.name, job.output_uri) in edges or any(src == base.name for src, _ in edges)


def test_bad_base_models_are_rejected_at_submit(tenant_clients, tmp_path):
    acme, globex = tenant_clients["acme"], tenant_clients["globex"]
    (tmp_path / "w.bin").write_bytes(os.urandom(64))
    acme.models.register("ft-not-hf", [str(tmp_path / "w.bin")], format="other")
    spec = {"trainer": {"trainer": "causal-lm", "datasets": [], "config": CFG}}
    for uri, code in (("models:/ft-missing@prod", "INVALID_ARGUMENT"), ("ft-base@prod", "INVALID_ARGUMENT"),
                      ("models:/ft-not-hf/latest", "INVALID_ARGUMENT")):
        with pytest.raises(pylon.PylonError) as err:
            acme.jobs.submit({**spec, "trainer": {**spec["trainer"], "base_model": uri}})
        assert err.value.code.name == code and "base_model" in str(err.value), uri
    with pytest.raises(pylon.PylonError) as err:  # another tenant's model does not resolve for globex
        globex.jobs.submit({**spec, "trainer": {**spec["trainer"], "base_model": "models:/ft-not-hf/latest"}})
    assert err.value.code.name == "INVALID_ARGUMENT" and "not found" in str(err.value)
