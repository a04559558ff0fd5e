"""The causal-lm trainer's settings as the scheduler's API checks them at submit (torch-free),
and the registry rules its jobs meet in ``validate_spec``: one process per GPU, where a trained
model is registered, which base model formats it takes."""

from __future__ import annotations

import sys

import pytest

from pylon_services.common.errors import InvalidArgument
from pylon_services.scheduler.domain.spec import JobSpec, Resources, Trainer, validate_spec
from pylon_services.trainers.causal_lm_config import PRESETS, config_violations, resolve
from pylon_services.workloads import REGISTRY, WorkloadKind


def _fields(config: dict) -> list[str]:
    return [f for f, _ in config_violations(config)]


def test_an_empty_config_is_valid_and_resolves_to_the_tiny_preset():
    assert config_violations({}) == []
    cfg = resolve({})
    assert cfg["preset"] == "tiny" and cfg["model"] == PRESETS["tiny"] and cfg["seq_len"] <= cfg["model"][
        "max_position_embeddings"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid_as_it_stands(preset):
    assert config_violations({"preset": preset}) == []


def test_a_model_override_replaces_only_its_field():
    cfg = resolve({"preset": "124m", "model": {"num_hidden_layers": 2}})
    assert cfg["model"] == {**PRESETS["124m"], "num_hidden_layers": 2}


def test_unknown_keys_are_named_at_the_top_and_in_model():
    assert _fields({"stepz": 3, "model": {"n_layer": 2}}) == ["stepz", "model.n_layer"]


def test_every_bad_field_is_named_at_once():
    bad = {"preset": "7b", "seq_len": 4, "batch_size": 0, "grad_accum": 2000, "steps": 0, "lr": 0,
           "min_lr_ratio": 1.5, "warmup": -1, "weight_decay": 2, "grad_clip": -1, "eval_every": -1,
           "eval_batches": 0, "eval_fraction": 0.6, "log_every": 0, "seed": -1, "dtype": "float16",
           "compile": "yes", "device": "tpu", "checkpoint_every_minutes": -5, "keep_checkpoints": 0,
           "tokenizer": "Not An Id", "max_new_tokens_sample": 513}
    assert sorted(_fields(bad)) == sorted(bad)


@pytest.mark.parametrize("value", [True, 1.5, "8", None])
def test_an_integer_field_refuses_what_is_not_an_integer(value):
    assert _fields({"batch_size": value}) == ["batch_size"]


@pytest.mark.parametrize("config, field", [
    ({"model": {"hidden_size": 130}}, "model.hidden_size"),  # not divisible by 4 heads
    ({"model": {"num_key_value_heads": 3}}, "model.num_attention_heads"),  # 4 heads, 3 kv heads
    ({"seq_len": 2048}, "seq_len"),  # the tiny preset holds 1024 positions
    ({"model": {"max_position_embeddings": 64}, "seq_len": 128}, "seq_len"),
    ({"steps": 10, "warmup": 11}, "warmup"),
    ({"eval_every": 10, "eval_fraction": 0}, "eval_fraction"),
])
def test_rules_between_fields(config, field):
    assert _fields(config) == [field]


def test_the_limits_are_inclusive():
    ok = {"seq_len": 1024, "batch_size": 4096, "grad_accum": 1024, "steps": 10**9, "lr": 1, "min_lr_ratio": 0,
          "warmup": 0, "eval_fraction": 0.5, "seed": 2**53, "compile": True, "keep_checkpoints": 100,
          "max_new_tokens_sample": 512, "tokenizer": "web-bpe", "dtype": "bfloat16", "device": "cuda"}
    assert config_violations(ok) == []


def test_the_check_imports_no_torch():
    import subprocess

    code = ("import sys, pylon_services.workloads as w; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def _spec(config: dict | None = None, gpus: float = 1, **trainer: object) -> JobSpec:
    return JobSpec(Trainer("causal-lm", config=config or {}, **trainer),  # type: ignore[arg-type]
                   resources=Resources(gpus=gpus), workers=4)


def _violations(spec: JobSpec) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as e:
        validate_spec(spec)
    return {v.field: v.description for v in e.value.violations}


def test_causal_lm_is_registered_with_its_check_and_rules():
    w = REGISTRY.get(WorkloadKind.TRAINER, "causal-lm")
    assert w is not None and w.entrypoint == "pylon_services.trainers.causal_lm_job:run"
    assert w.check_config is config_violations and w.needs_tokens and w.max_workers is None
    assert w.base_model_formats == ("MODEL_FORMAT_HF_TRANSFORMERS",) and w.max_gpus_per_worker == 1
    assert REGISTRY.names(WorkloadKind.TRAINER) == ["causal-lm"]
    validate_spec(_spec())  # four workers of one GPU each: data-parallel


def test_a_bad_config_is_refused_with_each_field_named():
    bad = _violations(_spec({"lr": 2, "model": {"hidden_size": 130}, "nope": 1}))
    assert set(bad) == {"spec.trainer.config.lr", "spec.trainer.config.model.hidden_size",
                        "spec.trainer.config.nope"}


def test_more_than_one_gpu_per_worker_is_refused():
    bad = _violations(_spec(gpus=2))
    assert bad == {"spec.resources.gpus_per_worker": "causal-lm runs one process per GPU: ask for more workers "
                                                     "instead"}


def test_a_fraction_of_a_gpu_per_worker_is_fine():
    validate_spec(_spec(gpus=0.5))


@pytest.mark.parametrize("model, alias, field", [
    ("My-Model", "", "spec.trainer.register_model.model"),
    ("m" * 64, "", "spec.trainer.register_model.model"),
    ("model\n", "", "spec.trainer.register_model.model"),
    ("", "prod", "spec.trainer.register_model.model"),  # an alias needs a model
    ("gpt", "Prod!", "spec.trainer.register_model.alias"),
    ("gpt", "latest", "spec.trainer.register_model.alias"),
])
def test_register_model_ids_follow_the_registry_rules(model, alias, field):
    assert list(_violations(_spec(register_model=model, register_alias=alias))) == [field]


def test_register_model_is_stored_and_read_back():
    spec = _spec(register_model="gpt-small", register_alias="candidate")
    validate_spec(spec)
    back = JobSpec.from_dict(spec.to_dict())
    assert back == spec and spec.to_dict()["trainer"]["register_model"] == {"model": "gpt-small",
                                                                            "alias": "candidate"}


def test_a_trainer_without_base_model_formats_takes_no_base_model():
    from pylon_services.workloads.registry import Workload, WorkloadRegistry

    registry = WorkloadRegistry()
    registry.register(Workload(WorkloadKind.TRAINER, "plain", "m:f", "no fine-tuning"))
    spec = JobSpec(Trainer("plain", base_model="models:/x@prod"))
    with pytest.raises(InvalidArgument) as e:
        validate_spec(spec, registry)
    assert [v.field for v in e.value.violations] == ["spec.trainer.base_model"]


def test_a_rule_between_fields_is_not_checked_against_a_bad_field():
    assert _fields({"steps": "many", "warmup": 2000}) == ["steps"]  # not also "warmup > the default steps"
    assert _fields({"preset": "7b", "model": {"hidden_size": 130}}) == ["preset"]
