"""HF model directories: what we write, transformers loads with the same logits, and back.

transformers itself is the reference on both sides: it loads what ``write_hf_model`` writes,
and ``load_hf_model`` reads what its ``save_pretrained`` writes (sharded too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from pylon_services.ingest.domain.tokenize import EOS_TOKEN, train_tokenizer
from pylon_services.ml.hf import (
    DEFAULT_CHAT_TEMPLATE,
    eos_token_ids,
    load_hf_model,
    load_tokenizer,
    read_hf_spec,
    write_hf_model,
)
from pylon_services.ml.llama import Llama, LlamaSpec, generate

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

VOCAB = 300
SPEC = LlamaSpec(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
WORDS = "the quick brown fox jumps over lazy dogs while pack my box with five dozen jugs".split()


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    """A byte-level BPE tokenizer trained the way ingest trains one (EOS its only special)."""
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(9)) + f" {i}"
             for i in range(300)]
    tokenizer = train_tokenizer(lines, vocab_size=VOCAB)
    assert tokenizer.get_vocab_size() <= VOCAB
    return str(tokenizer.to_str())


def _model(tied: bool = False, seed: int = 0) -> Llama:
    model = Llama(LlamaSpec(**{**SPEC.__dict__, "tie_word_embeddings": tied}))
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()


def _batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(5))


def _hf_logits(directory: Path, ids: torch.Tensor, attn: str = "eager") -> torch.Tensor:
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation=attn).eval()
    with torch.no_grad():
        logits: torch.Tensor = hf(ids).logits
    return logits


def _write(directory: Path, model: Llama, tokenizer_json: str, **kwargs: Any) -> list[str]:
    return write_hf_model(directory, model, tokenizer_json=tokenizer_json, eos_token=EOS_TOKEN,
                          **kwargs)


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_loads_what_we_write_with_equal_logits(
        tmp_path: Path, tokenizer_json: str, tied: bool) -> None:
    model, ids = _model(tied), _batch()
    files = _write(tmp_path, model, tokenizer_json, generation={"temperature": 0.7})
    assert files == sorted(["config.json", "generation_config.json", "model.safetensors",
                            "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"])
    assert ("lm_head.weight" in load_file(tmp_path / "model.safetensors")) is not tied
    with torch.no_grad():
        ours = model(ids)
    for attn in ("eager", "sdpa"):
        torch.testing.assert_close(_hf_logits(tmp_path, ids, attn), ours, atol=1e-4, rtol=0)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert (config.eos_token_id, config.tie_word_embeddings) == (0, tied)
    assert json.loads((tmp_path / "generation_config.json").read_text())["temperature"] == 0.7
    assert eos_token_ids(tmp_path) == [0]
    # And back: our loader reproduces the model exactly.
    assert read_hf_spec(tmp_path) == LlamaSpec(**{**model.spec.__dict__, "eos_token_id": 0})
    torch.testing.assert_close(load_hf_model(tmp_path)(ids), ours, atol=0, rtol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_we_load_a_sharded_directory_transformers_wrote(tmp_path: Path, tied: bool) -> None:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 5e4})
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    ours, ids = load_hf_model(tmp_path), _batch()
    assert ours.spec.rope_theta == 5e4 and ours.spec.rms_norm_eps == config.rms_norm_eps
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)
    bf16 = load_hf_model(tmp_path, dtype=torch.bfloat16)
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16


def test_sharded_writing_is_loaded_by_transformers_and_rewrites_drop_stale_shards(
        tmp_path: Path, tokenizer_json: str) -> None:
    model, ids = _model(), _batch()
    files = _write(tmp_path, model, tokenizer_json, max_shard_bytes=60_000)
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    assert "model.safetensors" not in files
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(tmp_path, ids), model(ids), atol=1e-4, rtol=0)
    files = _write(tmp_path, model, tokenizer_json, dtype=torch.bfloat16)
    assert "model.safetensors" in files and not list(tmp_path.glob("model-*"))
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_file(tmp_path / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16


def test_tokenizer_round_trips_through_transformers(tmp_path: Path, tokenizer_json: str) -> None:
    _write(tmp_path, _model(), tokenizer_json)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_tokenizer(tmp_path)
    text = "the lazy fox packs five jugs, naïvely 42 times"
    assert hf_tok.encode(text) == ours.encode(text).ids
    assert hf_tok.decode(ours.encode(text).ids) == text
    assert (hf_tok.eos_token, hf_tok.eos_token_id) == (EOS_TOKEN, 0)
    rendered = hf_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == f"user: hi{EOS_TOKEN}\nassistant:"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_writing_refuses_tokens_the_tokenizer_lacks(tmp_path: Path, tokenizer_json: str) -> None:
    with pytest.raises(ValueError, match="eos_token"):
        write_hf_model(tmp_path, _model(), tokenizer_json=tokenizer_json, eos_token="</s>")
    with pytest.raises(ValueError, match="bos_token"):
        _write(tmp_path, _model(), tokenizer_json, bos_token="<s>")
    with pytest.raises(ValueError, match="vocab_size"):
        _write(tmp_path, Llama(LlamaSpec(**{**SPEC.__dict__, "vocab_size": 100})), tokenizer_json)


def test_a_compiled_model_is_written_under_hf_names(tmp_path: Path, tokenizer_json: str) -> None:
    model = _model()
    _write(tmp_path, torch.compile(model), tokenizer_json)  # type: ignore[arg-type]
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())


def test_greedy_generate_matches_transformers(tmp_path: Path, tokenizer_json: str) -> None:
    model = _model(seed=4)
    _write(tmp_path, model, tokenizer_json)
    prompt = _batch()[0, :6]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    expected = hf.generate(prompt[None], attention_mask=torch.ones(1, 6, dtype=torch.long),
                           do_sample=False, max_new_tokens=10, eos_token_id=None,
                           pad_token_id=0)[0, 6:].tolist()
    assert generate(model, prompt.tolist(), 10) == expected


def test_loading_is_strict_about_tensors(tmp_path: Path, tokenizer_json: str) -> None:
    _write(tmp_path, _model(), tokenizer_json)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"},
              weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj"):
        load_hf_model(tmp_path)
    save_file({**tensors, "model.layers.9.mlp.up_proj.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.9\.mlp\.up_proj"):
        load_hf_model(tmp_path)
    save_file({**tensors, "model.norm.weight": torch.zeros(3)}, weights)
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \(3,\)"):
        load_hf_model(tmp_path)
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        load_hf_model(tmp_path)
    weights.unlink()
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf_model(tmp_path)


def test_loading_names_a_missing_shard_and_refuses_unsupported_configs(
        tmp_path: Path, tokenizer_json: str) -> None:
    _write(tmp_path, _model(), tokenizer_json, max_shard_bytes=60_000)
    next(tmp_path.glob("model-00002-*")).unlink()
    with pytest.raises(ValueError, match="model-00002"):
        load_hf_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "mlp_bias": True}))
    with pytest.raises(ValueError, match="mlp_bias"):
        read_hf_spec(tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        read_hf_spec(tmp_path / "nowhere")
