"""The torch engine serving a Hugging Face Llama directory: loaded from a model version in an
object store the way a replica loads it, then streamed, compared with ``ml.llama.generate``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pylon.demo_corpus import build_corpus
from pylon_services.common import blobs
from pylon_services.common.layout import model_version_key
from pylon_services.engines.torch_engine import GeneratedPiece, HfRunner, IncrementalDecoder, ModelRunner
from pylon_services.engines.torch_engine.server import download_files, load_runner
from pylon_services.ingest.domain.tokenize import EOS_TOKEN, train_tokenizer
from pylon_services.ml.checkpoint import checkpoint_files, write_checkpoint_dir
from pylon_services.ml.gpt import GPT, GPTConfig
from pylon_services.ml.hf import write_hf_model
from pylon_services.ml.llama import Llama, generate, preset
from pylon_services.storage.local import LocalObjectStore

torch.set_num_threads(1)

TENANT = "acme"
CONTEXT = 64
ACCENTED = "naïve café → résumé"
# Larger than HF's 0.02 init so the random model's logits are peaked: greedy choices then do not
# hinge on rounding differences between attention kernels.
INIT_STD = 0.5


def text_of(pieces: list[GeneratedPiece]) -> str:
    return "".join(p.text for p in pieces)


def ids_of(pieces: list[GeneratedPiece]) -> list[int]:
    return [t for p in pieces for t in p.token_ids]


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    """A BPE tokenizer trained as ingest trains one, on demo text with accented lines mixed in."""
    lines = [line for line in build_corpus(60_000).splitlines() if line.strip()][:400]
    lines += [f"{ACCENTED} {i}" for i in range(100)]
    return str(train_tokenizer(lines, vocab_size=400).to_str())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_json: str) -> Path:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tokenizer_json).get_vocab_size(with_added_tokens=True)
    spec = preset("tiny", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  max_position_embeddings=CONTEXT, initializer_range=INIT_STD)
    model = Llama(spec)
    model.reset_parameters(torch.Generator().manual_seed(0))
    directory = tmp_path_factory.mktemp("hf-model")
    write_hf_model(directory, model, tokenizer_json=tokenizer_json, eos_token=EOS_TOKEN)
    return directory


def register(store: LocalObjectStore, model: str, directory: Path, fmt: str,
             paths: dict[str, str] | None = None) -> str:
    """Store ``directory``'s files and a version manifest the way the registry lays them out."""
    files: list[dict[str, Any]] = []
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
        key = blobs.blob_key(TENANT, digest)
        store.put_file(key, str(file))
        path = file.relative_to(directory).as_posix()
        files.append({"path": (paths or {}).get(path, path), "object_key": key, "digest": digest,
                      "size_bytes": file.stat().st_size})
    name = f"tenants/{TENANT}/models/{model}/versions/1"
    manifest = {"name": name, "version": 1, "state": "ready", "format": fmt, "files": files,
                "digest": blobs.manifest_digest(files), "create_time": 0.0}
    store.put(model_version_key(TENANT, model, 1), blobs.dump(manifest), if_none_match=True)
    return name


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    return LocalObjectStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def runner(store: LocalObjectStore, model_dir: Path) -> HfRunner:
    loaded = load_runner(store, TENANT, register(store, "llama", model_dir, "hf_transformers"))
    assert isinstance(loaded, HfRunner)
    return loaded


def eos_id(runner: HfRunner) -> int:
    found = runner.tokenizer.token_to_id(EOS_TOKEN)
    assert found is not None
    return int(found)


def test_load_runner_serves_the_version_on_cpu_in_fp32(runner: HfRunner) -> None:
    assert runner.device == torch.device("cpu") and runner.architecture == "LlamaForCausalLM"
    assert runner.model.model.embed_tokens.weight.dtype == torch.float32
    assert runner.eos_ids == {eos_id(runner)}


@pytest.mark.parametrize("prompt", ["The quick", f"{ACCENTED} and"])
def test_greedy_output_equals_llama_generate(runner: HfRunner, prompt: str) -> None:
    prompt_ids = runner.tokenizer.encode(prompt).ids
    pieces = list(runner.generate(prompt, max_tokens=30, temperature=0))
    expected = generate(runner.model, prompt_ids, 30, eos_token_id=eos_id(runner))
    assert ids_of(pieces) == expected
    assert [p.completion_tokens for p in pieces] == list(range(1, len(expected) + 1))
    assert all(p.prompt_tokens == len(prompt_ids) for p in pieces)


def test_streamed_text_is_the_decode_of_the_tokens_and_never_splits_a_character(runner: HfRunner) -> None:
    seen_multibyte = False
    for seed in range(6):
        pieces = list(runner.generate(ACCENTED, max_tokens=40, temperature=1.0, seed=seed))
        ids = [t for t in ids_of(pieces) if t not in runner.eos_ids]
        assert text_of(pieces) == runner.tokenizer.decode(ids)
        # Only the last piece may end in U+FFFD (a flushed, truly incomplete byte sequence).
        assert not any(p.text.endswith("\ufffd") for p in pieces[:-1])
        seen_multibyte |= any(ord(c) > 127 and c != "\ufffd" for c in text_of(pieces))
    assert seen_multibyte  # the check above did meet characters of several bytes


def test_incremental_decoder_holds_back_half_characters(tokenizer_json: str) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    text = "日本 ✓ ok"  # never seen in training: each character is several byte tokens
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text)
    decoder = IncrementalDecoder(tokenizer, tokenizer.encode("prefix ").ids)
    pieces = [decoder.push(t) for t in ids]
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in p for p in pieces) and "" in pieces  # some were held back


def test_a_seed_reproduces_a_sample(runner: HfRunner) -> None:
    def ids(seed: int) -> list[int]:
        return ids_of(list(runner.generate("The", max_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=seed)))

    assert ids(7) == ids(7)
    assert ids(7) != ids(8)


def test_stop_strings_end_the_stream_and_are_never_streamed(runner: HfRunner) -> None:
    full = text_of(list(runner.generate("The quick", max_tokens=40, temperature=0)))
    stop = full[12:16]
    assert len(stop) == 4
    pieces = list(runner.generate("The quick", max_tokens=40, temperature=0, stop=["zzzz", stop]))
    assert text_of(pieces) == full[: full.find(stop)]
    assert pieces[-1].finish_reason == "stop" and len(pieces) < 40
    assert all(stop not in p.text for p in pieces)


def test_max_tokens_ends_with_length(runner: HfRunner) -> None:
    pieces = list(runner.generate("The", max_tokens=5, temperature=0))
    assert len(pieces) == 5 and [p.finish_reason for p in pieces] == [None] * 4 + ["length"]


def test_an_eos_token_ends_with_stop_and_is_not_in_the_text(runner: HfRunner) -> None:
    greedy = ids_of(list(runner.generate("The", max_tokens=10, temperature=0)))
    # Declare the fourth greedy token an eos token: generation ends right there.
    eos_runner = HfRunner(runner.model, runner.tokenizer, [greedy[3]])
    pieces = list(eos_runner.generate("The", max_tokens=10, temperature=0))
    assert ids_of(pieces) == greedy[: greedy.index(greedy[3]) + 1]
    assert pieces[-1].finish_reason == "stop" and pieces[-1].completion_tokens == len(pieces)
    assert text_of(pieces) == runner.tokenizer.decode(ids_of(pieces)[:-1])


def test_the_context_length_ends_with_length(runner: HfRunner) -> None:
    prompt = " ".join(["word"] * 200)
    prompt_ids = runner.tokenizer.encode(prompt).ids
    assert len(prompt_ids) > CONTEXT
    pieces = list(runner.generate(prompt, max_tokens=50, temperature=0))
    # The prompt keeps its last tokens, leaving room for max_tokens up to half the context.
    kept = prompt_ids[-(CONTEXT - CONTEXT // 2):]
    assert ids_of(pieces) == generate(runner.model, kept, 50, eos_token_id=eos_id(runner))
    assert len(pieces) == CONTEXT // 2 and pieces[-1].finish_reason == "length"
    assert pieces[-1].prompt_tokens == len(prompt_ids)
    # A prompt that fits is kept whole; generation runs up to the context length.
    fits = runner.tokenizer.encode(ACCENTED * 2).ids
    pieces = list(runner.generate(ACCENTED * 2, max_tokens=200, temperature=0))
    assert len(pieces) == CONTEXT - len(fits) and pieces[-1].finish_reason == "length"


def test_an_empty_prompt_starts_from_the_eos_token(runner: HfRunner) -> None:
    pieces = list(runner.generate("", max_tokens=5, temperature=0))
    assert ids_of(pieces) == generate(runner.model, [eos_id(runner)], 5, eos_token_id=eos_id(runner))
    assert pieces[-1].prompt_tokens == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
    ({"seed": -5}, "seed"), ({"stop": [""]}, "stop"),
])
def test_arguments_are_validated_eagerly(runner: HfRunner, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        runner.generate("hi", **kwargs)  # type: ignore[arg-type]


def test_formats_and_architectures_it_cannot_serve_fail_clearly(
        store: LocalObjectStore, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format is 'onnx'; it serves pylon_gpt, hf_transformers"):
        load_runner(store, TENANT, register(store, "an-onnx", model_dir, "onnx"))
    other = tmp_path / "classifier"
    shutil.copytree(model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ValueError, match="cannot serve architecture .*LlamaForSequenceClassification"):
        load_runner(store, TENANT, register(store, "classifier", other, "hf_transformers"))
    with pytest.raises(ValueError, match="leaves the model directory"):
        load_runner(store, TENANT, register(store, "escape", model_dir, "hf_transformers",
                                            paths={"config.json": "../config.json"}))


def test_a_tiny_gpt_checkpoint_registered_as_hf_transformers_still_loads(
        store: LocalObjectStore, tmp_path: Path) -> None:
    """The SDK detects hf_transformers for any config.json + safetensors directory."""
    cfg = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)
    write_checkpoint_dir(checkpoint_files(GPT(cfg), cfg, {"step": 0}), tmp_path / "gpt")
    loaded = load_runner(store, TENANT, register(store, "tiny", tmp_path / "gpt", "hf_transformers"))
    assert isinstance(loaded, ModelRunner)
    assert len(list(loaded.generate("hi", max_tokens=3, temperature=0))) == 3


def test_files_keep_their_relative_paths(store: LocalObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "extra").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "extra" / "notes.txt").write_text("kept where it was")
    register(store, "nested", source, "other")
    files = json.loads(store.get(model_version_key(TENANT, "nested", 1)))["files"]
    download_files(store, files, tmp_path / "out")
    assert (tmp_path / "out" / "extra" / "notes.txt").read_text() == "kept where it was"
