"""Submitting a causal-lm job through the real platform: its config checked field by field, its
dataset versions and their tokenizations pinned at submit, a base model's format and tokenizer
checked against them; a stalled command ended by the leader; a command submitted from the CLI
without a spec file. Accepted trainer jobs ask for an A100, a pool with no node yet, so they wait
and are cancelled instead of running."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

import pylon
from pylon.cli import app

pytestmark = pytest.mark.integration
WAITING = {"gpus": 1, "gpu_types": ["A100"]}  # the declared A100 pool has no node: the job waits
TOKENIZER, OTHER = "sub-bpe", "sub-other"


def _causal_lm(datasets: list[str], config: dict[str, Any] | None = None, **trainer: Any) -> dict[str, Any]:
    return {"resources": WAITING, "trainer": {"trainer": "causal-lm", "datasets": datasets, "config": config or {},
                                              **trainer}}


def _corpus(tmp_path: Any, name: str, words: str, lines: int = 300) -> str:
    path = tmp_path / f"{name}.jsonl"
    with open(path, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"text": f"{words} {i} and then some more {words} number {i % 17}"}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def data(tenant_clients: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Datasets of acme: "sub-a" tokenized twice (sub-bpe and sub-other), "sub-b" with sub-bpe,
    "sub-c" with sub-other, "sub-raw" not at all. Two tokenizers are trained; the rest reuse them.
    Each dataset's version name by its id; each Tokenization by (dataset, tokenizer)."""
    acme, tmp = tenant_clients["acme"], tmp_path_factory.mktemp("corpora")
    out: dict[Any, Any] = {}
    for name, words in (("sub-a", "the quick brown fox"), ("sub-b", "a lazy dog sleeps"), ("sub-c", "ships sail"),
                        ("sub-raw", "nothing tokenized")):
        out[name] = acme.datasets.upload(_corpus(tmp, name, words), name).name
    for dataset, tokenizer, vocab in (("sub-a", TOKENIZER, 300), ("sub-a", OTHER, 320), ("sub-b", TOKENIZER, 0),
                                      ("sub-c", OTHER, 0)):
        out[dataset, tokenizer] = acme.datasets.tokenize(dataset, 1, tokenizer=tokenizer, vocab_size=vocab,
                                                         shard_tokens=1024)
    return out


def _refused(client: Any, spec: dict[str, Any], error: type) -> Any:
    with pytest.raises(error) as e:
        client.jobs.submit(spec)
    return e.value


def test_a_bad_causal_lm_config_is_refused_naming_every_field(tenant_clients):
    err = _refused(tenant_clients["acme"], _causal_lm([], {"lr": 5, "seq_len": 4, "model": {"hidden_size": 130},
                                                          "bogus": 1}), pylon.InvalidArgumentError)
    assert {v.field for v in err.violations} == {"spec.trainer.config.lr", "spec.trainer.config.seq_len",
                                                 "spec.trainer.config.model.hidden_size",
                                                 "spec.trainer.config.bogus"}


def test_more_than_one_gpu_per_causal_lm_worker_is_refused(tenant_clients):
    spec = {**_causal_lm([]), "resources": {"gpus": 2, "gpu_types": ["V100"]}}
    err = _refused(tenant_clients["acme"], spec, pylon.InvalidArgumentError)
    assert [v.field for v in err.violations] == ["spec.resources.gpus_per_worker"]
    assert "causal-lm runs one process per GPU: ask for more workers instead" in str(err)


def test_a_register_model_id_is_checked_at_submit(tenant_clients):
    err = _refused(tenant_clients["acme"], _causal_lm([], register_model={"model": "Not An Id", "alias": "latest"}),
                   pylon.InvalidArgumentError)
    assert {v.field for v in err.violations} == {"spec.trainer.register_model.model",
                                                 "spec.trainer.register_model.alias"}


def test_a_missing_dataset_or_version_is_a_failed_precondition(tenant_clients, data):
    acme = tenant_clients["acme"]
    err = _refused(acme, _causal_lm(["tenants/-/datasets/sub-none/versions/latest"]), pylon.FailedPreconditionError)
    assert "tenants/acme/datasets/sub-none" in str(err)
    err = _refused(acme, {"command": {"argv": ["true"], "datasets": ["tenants/-/datasets/sub-raw/versions/9"]}},
                   pylon.FailedPreconditionError)
    assert "tenants/acme/datasets/sub-raw/versions/9 does not exist" in str(err)


def test_an_untokenized_version_is_refused_for_causal_lm(tenant_clients, data):
    err = _refused(tenant_clients["acme"], _causal_lm([data["sub-raw"]]), pylon.FailedPreconditionError)
    assert f"{data['sub-raw']} is not tokenized" in str(err) and "pylon datasets tokenize" in str(err)


def test_a_version_with_two_tokenizations_needs_the_config_to_name_one(tenant_clients, data):
    err = _refused(tenant_clients["acme"], _causal_lm([data["sub-a"]]), pylon.FailedPreconditionError)
    assert f"several tokenizations ({TOKENIZER}, {OTHER})" in str(err) and '"tokenizer"' in str(err)


def test_a_tokenizer_the_version_lacks_is_refused(tenant_clients, data):
    err = _refused(tenant_clients["acme"], _causal_lm([data["sub-b"]], {"tokenizer": OTHER}),
                   pylon.FailedPreconditionError)
    assert f"is not tokenized with {OTHER} (it has {TOKENIZER})" in str(err)


def test_datasets_of_different_tokenizers_are_refused(tenant_clients, data):
    err = _refused(tenant_clients["acme"], _causal_lm([data["sub-b"], data["sub-c"]]), pylon.FailedPreconditionError)
    assert "must share a tokenizer" in str(err) and TOKENIZER in str(err) and OTHER in str(err)


def test_latest_and_the_tokenizations_are_pinned_at_submit(tenant_clients, data):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit(_causal_lm(["tenants/-/datasets/sub-a/versions/latest", data["sub-b"]],
                                      {"tokenizer": TOKENIZER}, register_model={"model": "sub-lm", "alias": "prod"}))
    try:
        t = acme.jobs.get(job.name).spec["trainer"]
        assert t["datasets"] == ["tenants/acme/datasets/sub-a/versions/1", data["sub-b"]]
        assert [p["dataset_version"] for p in t["token_data"]] == t["datasets"]
        first = data["sub-a", TOKENIZER]
        pinned = t["token_data"][0]
        assert (pinned["tokenizer"], pinned["tokenizer_object_key"], pinned["index_object_key"],
                pinned["shard_prefix"], int(pinned["total_tokens"])) == (
            TOKENIZER, first.tokenizer_object_key, first.index_object_key, first.shard_prefix, first.total_tokens)
        assert t["register_model"] == {"model": "sub-lm", "alias": "prod"}
    finally:
        acme.jobs.cancel(job.name)


def test_a_later_upload_does_not_move_a_pinned_latest(tenant_clients, data, tmp_path):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"resources": WAITING, "command": {
        "argv": ["true"], "datasets": ["tenants/-/datasets/sub-raw/versions/latest"]}})
    try:
        assert job.spec["command"]["datasets"] == [data["sub-raw"]]  # version 1, by number
        acme.datasets.upload(_corpus(tmp_path, "more", "a second version"), "sub-raw")
        assert acme.jobs.get(job.name).spec["command"]["datasets"] == [data["sub-raw"]]
    finally:
        acme.jobs.cancel(job.name)


def _hf_model_dir(root: Any, tokenizer_json: str | None) -> str:
    """A directory the registry takes as an HF model (its weights are not read at submit)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    if tokenizer_json is not None:
        fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), eos_token="<|endoftext|>")
        fast.save_pretrained(str(root))
    return str(root)


def _dataset_tokenizer(platform: Any, data: dict[Any, Any], acme: Any) -> str:
    from pylon_services.storage.factory import open_store

    t = data["sub-b", TOKENIZER]
    return open_store(platform.base["object_store_url"]).get(t.tokenizer_object_key).decode()


def test_a_base_model_with_the_datasets_tokenizer_is_pinned(tenant_clients, data, platform, tmp_path):
    acme = tenant_clients["acme"]
    base = acme.models.register("sub-base-same", _hf_model_dir(tmp_path / "m", _dataset_tokenizer(platform, data, acme)),
                                format="hf_transformers")
    job = acme.jobs.submit(_causal_lm([data["sub-b"]], base_model="models:/sub-base-same/latest"))
    try:
        assert job.spec["trainer"]["base_model_version"] == base.name
    finally:
        acme.jobs.cancel(job.name)


def test_a_base_model_with_another_tokenizer_is_refused(tenant_clients, data, tmp_path):
    from pylon_services.ingest.domain.tokenize import train_tokenizer

    acme = tenant_clients["acme"]
    other = train_tokenizer((f"entirely different words {i}" for i in range(300)), vocab_size=300).to_str()
    acme.models.register("sub-base-other", _hf_model_dir(tmp_path / "m", other), format="hf_transformers")
    err = _refused(acme, _causal_lm([data["sub-b"]], base_model="models:/sub-base-other/latest"),
                   pylon.FailedPreconditionError)
    assert "the base model's tokenizer differs from the dataset's" in str(err)


def test_a_base_model_without_tokenizer_json_is_refused(tenant_clients, data, tmp_path):
    acme = tenant_clients["acme"]
    acme.models.register("sub-base-none", _hf_model_dir(tmp_path / "m", None), format="hf_transformers")
    err = _refused(acme, _causal_lm([data["sub-b"]], base_model="models:/sub-base-none/latest"),
                   pylon.FailedPreconditionError)
    assert "has no tokenizer.json" in str(err)


def test_a_base_model_of_another_format_is_refused(tenant_clients, data, platform, tmp_path):
    acme = tenant_clients["acme"]
    acme.models.register("sub-base-st", _hf_model_dir(tmp_path / "m", _dataset_tokenizer(platform, data, acme)),
                         format="safetensors")
    err = _refused(acme, _causal_lm([data["sub-b"]], base_model="models:/sub-base-st/latest"),
                   pylon.InvalidArgumentError)
    assert [v.field for v in err.violations] == ["spec.trainer.base_model"]
    assert "is SAFETENSORS; causal-lm fine-tunes HF_TRANSFORMERS" in str(err)


def test_a_command_without_progress_past_its_stall_timeout_fails_as_stalled(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"stall_timeout": "3s", "command": {"argv": ["sleep", "120"]}})
    assert job.spec["stall_timeout"] == "3s"
    done = acme.jobs.wait(job.name, timeout=90)
    assert done.state == "failed" and "(stalled)" in done.message and "no step progress for" in done.message


def test_the_cli_submits_a_command_without_a_spec_file(admin_client, platform, tmp_path):
    _, token = admin_client.admin.create_key("acme", "editor")
    (tmp_path / "hello.py").write_text("import os, sys\nprint('hello', os.environ['GREETING'], sys.argv[1:])\n")
    result = CliRunner().invoke(app, [
        "--address", platform.addresses["gateway"], "--token", token, "jobs", "submit", "--working-dir", str(tmp_path),
        "--env", "GREETING=world", "--cpus", "1", "--memory", "64Mi", "--name", "cli-hello", "--json",
        "--", sys.executable, "hello.py", "--lr", "3e-4"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["state"] == "succeeded" and job["spec"]["display_name"] == "cli-hello"
    assert job["spec"]["command"]["argv"][1:] == ["hello.py", "--lr", "3e-4"]
    assert int(job["spec"]["resources"]["memory_bytes"]) == 64 << 20
    with pylon.Client(platform.addresses["gateway"], token) as c:
        assert "hello world ['--lr', '3e-4']" in "\n".join(c.jobs.logs(job["name"]))
