"""The Llama module on CPU: spec and presets, HF parameter names, init, KV cache and generation.

Parity with ``transformers`` itself lives in test_hf_format.py; this file stays free of it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pylon_services.ml.llama import PRESETS, KVCache, Llama, LlamaSpec, generate, preset

torch.set_num_threads(1)

SPEC = LlamaSpec(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _model(spec: LlamaSpec = SPEC, seed: int = 0) -> Llama:
    model = Llama(spec)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SPEC.vocab_size, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_names_are_hf_llamas(tied: bool) -> None:
    model = Llama(LlamaSpec(**{**SPEC.__dict__, "tie_word_embeddings": tied}))
    expected = ["model.embed_tokens.weight"]
    for i in range(2):
        expected += [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"]
        expected += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        expected += [f"model.layers.{i}.input_layernorm.weight",
                     f"model.layers.{i}.post_attention_layernorm.weight"]
    expected += ["model.norm.weight"] + ([] if tied else ["lm_head.weight"])
    assert sorted(model.state_dict()) == sorted(expected)  # RoPE tables are not persistent
    assert model.state_dict()["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    assert sum(p.numel() for p in model.parameters()) == model.spec.num_params()


def test_num_params_matches_every_preset_and_flops_follow_the_convention() -> None:
    tiny = preset("tiny", 512)
    assert sum(p.numel() for p in Llama(tiny).parameters()) == tiny.num_params()
    for name in ("124m", "1b"):
        spec = preset(name, 32000)
        with torch.device("meta"):
            model = Llama(spec)
        assert sum(p.numel() for p in model.parameters()) == spec.num_params()
    one_b = preset("1b", 128256)
    assert one_b.tie_word_embeddings and round(one_b.num_params() / 1e9, 2) == 1.24  # Llama-3.2-1B
    small = preset("124m", 32000)
    assert small.tie_word_embeddings  # GPT-2's shape: the one table is also the lm_head's matmul
    assert small.flops_per_token(1024) == 6 * small.num_params() + 12 * 12 * 12 * 64 * 1024
    untied = preset("124m", 32000, tie_word_embeddings=False)
    n = untied.num_params() - 32000 * 768  # the input lookup table does no matmul; lm_head does
    assert untied.flops_per_token(1024) == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert round(preset("124m", 50257).num_params() / 1e6) == 124  # GPT-2 small's count
    n_tied = one_b.num_params()  # tied: the one table is the lm_head's matmul
    assert one_b.flops_per_token(2048) == 6 * n_tied + 12 * 16 * 32 * 64 * 2048


def test_preset_rejects_unknown_names_and_fields_and_applies_overrides() -> None:
    with pytest.raises(ValueError, match="nope"):
        preset("nope", 300)
    with pytest.raises(ValueError, match="hidden_sise"):
        preset("tiny", 300, hidden_sise=3)
    spec = preset("tiny", 300, max_position_embeddings=128, eos_token_id=0)
    assert (spec.max_position_embeddings, spec.eos_token_id, spec.hidden_size) == (128, 0, 128)
    assert set(PRESETS) == {"tiny", "124m", "1b"}


@pytest.mark.parametrize("field, value", [
    ("hidden_size", 0), ("num_key_value_heads", 3), ("num_attention_heads", 5),
    ("rms_norm_eps", 0.0), ("eos_token_id", 300), ("vocab_size", True),
])
def test_spec_rejects_bad_fields(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        LlamaSpec(**{**SPEC.__dict__, field: value})


def test_hf_config_round_trips() -> None:
    spec = preset("1b", 1000, eos_token_id=3, bos_token_id=2)
    config = spec.to_hf_config("bfloat16")
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["head_dim"], config["dtype"], config["rope_scaling"]) == (64, "bfloat16", None)
    assert LlamaSpec.from_hf_config(config) == spec
    # transformers-5 configs carry theta only in rope_parameters; lists of eos ids keep the first.
    modern = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling")}
    assert LlamaSpec.from_hf_config({**modern, "eos_token_id": [3, 5]}) == spec


@pytest.mark.parametrize("field, value", [
    ("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 32.0}),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4}),
    ("sliding_window", 4096), ("model_type", "qwen2"), ("head_dim", 128),
    ("quantization_config", {"quant_method": "gptq"}),
])
def test_from_hf_config_names_what_it_does_not_support(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        LlamaSpec.from_hf_config({**SPEC.to_hf_config(), field: value})


def test_from_hf_config_names_a_missing_field() -> None:
    config = SPEC.to_hf_config()
    del config["intermediate_size"]
    with pytest.raises(ValueError, match="intermediate_size"):
        LlamaSpec.from_hf_config(config)


def test_reset_parameters_is_hf_init_and_deterministic() -> None:
    a, b, c = _model(seed=7), _model(seed=7), _model(seed=8)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert torch.equal(a.model.norm.weight, torch.ones(64))
    std = float(a.state_dict()["model.layers.0.mlp.gate_proj.weight"].std())
    assert abs(std - 0.02) < 0.002


def test_meta_construction_then_to_empty_and_reset_gives_a_working_model() -> None:
    with torch.device("meta"):
        model = Llama(SPEC)
    model.to_empty(device="cpu")
    model.reset_parameters(torch.Generator().manual_seed(0))
    assert torch.equal(model(_ids(1, 8)), _model()(_ids(1, 8)))


def test_positions_drive_rotary_and_a_long_input_is_refused() -> None:
    model, ids = _model(), _ids(2, 10)
    with torch.no_grad():
        base = model(ids)
        assert torch.equal(model(ids, positions=torch.arange(10)), base)
        assert not torch.allclose(model(ids, positions=torch.arange(5, 15)), base)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(_ids(1, 65))
    with pytest.raises(ValueError, match="positions"):
        model(ids, kv_cache=KVCache.for_model(model, 2))


def test_kv_cache_prefill_in_chunks_equals_the_full_forward() -> None:
    model, ids = _model(), _ids(2, 20)
    cache = KVCache.for_model(model, 2, 24)
    with torch.no_grad():
        full = model(ids)
        first = model(ids[:, :12], positions=torch.arange(12), kv_cache=cache)
        rest = [model(ids[:, i:i + 1], positions=torch.full((2, 1), i), kv_cache=cache)
                for i in range(12, 20)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_rows_can_sit_at_different_positions() -> None:
    model, ids = _model(), _ids(2, 6)
    cache = KVCache.for_model(model, 2, 8)
    with torch.no_grad():
        model(ids[:, :4], positions=torch.arange(4), kv_cache=cache)
        # Row 0 continues at position 4; row 1 overwrites its position 2 (its own 3rd token).
        step = torch.stack([ids[0, 4:5], ids[1, 2:3]])
        out = model(step, positions=torch.tensor([[4], [2]]), kv_cache=cache)
        torch.testing.assert_close(out[0, 0], model(ids[:1, :5])[0, 4], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1, 0], model(ids[1:, :3])[0, 2], atol=1e-5, rtol=0)


def test_greedy_generate_equals_argmax_of_full_forwards() -> None:
    model, prompt = _model(), _ids(1, 5)[0].tolist()
    out = generate(model, prompt, 12)
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    assert out == tokens[len(prompt):]
    stop = out[3]
    assert generate(model, prompt, 12, eos_token_id=stop) == out[:out.index(stop) + 1]
    assert generate(model, prompt, 0) == []
    assert len(generate(model, _ids(1, 60)[0].tolist(), 10)) == 4  # stops at the context


def test_sampling_is_seeded_and_top_k_one_is_greedy() -> None:
    model, prompt = _model(), [1, 2, 3]

    def sample(seed: int, **kwargs: Any) -> list[int]:
        return generate(model, prompt, 8, temperature=1.0,
                        generator=torch.Generator().manual_seed(seed), **kwargs)

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)
    assert sample(3, top_k=1) == generate(model, prompt, 8)
    assert sample(3, top_p=1e-6) == generate(model, prompt, 8)
    for bad in ({"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}):
        with pytest.raises(ValueError):
            generate(model, prompt, 2, **bad)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [], 2)


def test_bf16_autocast_gives_bf16_logits_close_to_fp32() -> None:
    model, ids = _model(), _ids(2, 16)
    with torch.no_grad():
        exact = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(ids)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), exact, atol=5e-2, rtol=5e-2)


def test_training_forward_has_no_graph_breaks() -> None:
    explanation = torch._dynamo.explain(_model())(_ids(2, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
