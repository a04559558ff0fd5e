"""The tiny GPT end to end on CPU: train, checkpoint, resume, stream-generate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pylon_services.engines.torch_engine import GeneratedPiece, ModelRunner
from pylon_services.ml.checkpoint import (
    CheckpointError,
    load_model,
    load_trainer_state,
    read_checkpoint_dir,
    write_checkpoint_dir,
)
from pylon_services.ml.gpt import GPT, ByteTokenizer, GPTConfig, StreamDecoder
from pylon_services.trainers.tiny_gpt import train
from pylon_services.trainers.tiny_gpt_config import InvalidTrainConfig, TrainConfig

UNICODE_LINE = "héllo wörld ✓ 日本"
CORPUS = (
    "the quick brown fox jumps over the lazy dog.\n"
    "pack my box with five dozen liquor jugs!\n"
    f"{UNICODE_LINE}\n"
) * 60
SMALL = {"batch_size": 8, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64}


@dataclass
class Trained:
    files: dict[str, bytes]
    metrics: list[dict[str, float]]
    final_loss: float


@pytest.fixture(scope="module")
def trained() -> Trained:
    """One 150-step run shared by the tests that need a model that has learned the corpus."""
    metrics: list[dict[str, float]] = []
    cfg = TrainConfig(steps=150, warmup=10, eval_every=50, log_every=10, device="cpu", **SMALL)
    result = train(CORPUS.encode(), cfg, on_metrics=metrics.append)
    return Trained(result.files, metrics, result.final_loss)


@pytest.fixture(scope="module")
def runner(trained: Trained) -> ModelRunner:
    return ModelRunner.from_files(trained.files, device="cpu")


def text_of(pieces: list[GeneratedPiece]) -> str:
    return "".join(p.text for p in pieces)


def test_training_loss_drops_well_below_uniform(trained: Trained) -> None:
    first, last = trained.metrics[0], trained.metrics[-1]
    assert first["step"] == 10 and last["step"] == 150
    assert first["loss"] > 2.5  # near ln(256) = 5.5 at the start
    assert last["loss"] < 0.5 and trained.final_loss < 0.5
    assert last["loss"] < first["loss"] / 5
    assert "val_loss" in last and last["val_loss"] < 0.5
    assert all(m["tokens_per_s"] > 0 and m["lr"] > 0 for m in trained.metrics)


def test_checkpoint_round_trip_gives_identical_logits(trained: Trained, tmp_path: Path) -> None:
    model, cfg = load_model(trained.files, "cpu")
    saved_dir = write_checkpoint_dir(trained.files, tmp_path)
    again, cfg_again = load_model(read_checkpoint_dir(saved_dir))
    idx = torch.tensor([ByteTokenizer().encode("the quick brown")])
    with torch.no_grad():
        assert torch.equal(model(idx)[0], again(idx)[0])
    assert cfg == cfg_again == GPTConfig(block_size=32, n_embd=64)
    assert sorted(trained.files) == [
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
    ]
    assert load_trainer_state(trained.files)["step"] == 150


def test_corrupt_or_incomplete_checkpoint_is_rejected(trained: Trained) -> None:
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_model({k: v for k, v in trained.files.items() if k != "model.safetensors"})
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model({**trained.files, "model.safetensors": b"garbage"})


def test_greedy_generation_is_deterministic_and_learned(runner: ModelRunner) -> None:
    first = list(runner.generate("the quick", max_tokens=30, temperature=0))
    second = list(runner.generate("the quick", max_tokens=30, temperature=0))
    assert text_of(first) == text_of(second)
    assert text_of(first).startswith(" brown fox jumps")


def test_seeded_sampling_is_deterministic() -> None:
    torch.manual_seed(1)
    runner = ModelRunner(GPT(GPTConfig(block_size=32, n_embd=32)), torch.device("cpu"))

    def ids(seed: int) -> list[int]:
        pieces = runner.generate("hi", max_tokens=40, temperature=1.0, top_k=50, seed=seed)
        return [t for p in pieces for t in p.token_ids]

    assert ids(7) == ids(7)
    assert ids(7) != ids(8)


def test_stream_decoder_never_splits_a_character() -> None:
    data = UNICODE_LINE.encode()
    decoder = StreamDecoder()
    pieces = [decoder.push(b) for b in data] + [decoder.flush()]
    assert "".join(pieces) == UNICODE_LINE
    assert all("\ufffd" not in p for p in pieces)
    assert "✓" in pieces and "日" in pieces  # multi-byte characters arrive whole
    assert decoder.push([0xE6]) == "" and decoder.flush() == "\ufffd"  # dangling lead byte


def test_generated_pieces_are_whole_characters(runner: ModelRunner) -> None:
    pieces = list(runner.generate("héllo", max_tokens=30, temperature=0))
    assert text_of(pieces).startswith(" wörld ✓ 日本\n")
    assert all(len(p.token_ids) == 1 for p in pieces)
    assert any(p.text == "" for p in pieces)  # bytes of a character still arriving
    assert all("\ufffd" not in p.text for p in pieces)


def test_stop_and_resume_reaches_the_same_model(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=30, warmup=5, eval_every=0, device="cpu", **SMALL)
    corpus = CORPUS.encode()
    polls = iter(range(1000))
    first = train(corpus, cfg, should_stop=lambda: next(polls) >= 12)
    assert first.stopped_early and first.steps_done == 12
    assert load_trainer_state(first.files)["step"] == 12
    saved = read_checkpoint_dir(write_checkpoint_dir(first.files, tmp_path))
    rest = train(corpus, cfg, resume_from=saved)
    assert not rest.stopped_early and rest.steps_done == 30
    whole = train(corpus, cfg)
    resumed_model, _ = load_model(rest.files)
    whole_model, _ = load_model(whole.files)
    for (name, a), (_, b) in zip(
        resumed_model.state_dict().items(), whole_model.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    assert rest.final_loss == pytest.approx(whole.final_loss, abs=1e-5)


def test_resume_rejects_a_different_model_shape(trained: Trained) -> None:
    cfg = TrainConfig(steps=200, device="cpu", **{**SMALL, "n_embd": 128})
    with pytest.raises(ValueError, match="model of shape"):
        train(CORPUS.encode(), cfg, resume_from=trained.files)


def test_fine_tune_starts_from_the_base_weights_with_a_fresh_schedule(trained: Trained) -> None:
    cfg = TrainConfig(steps=5, warmup=0, lr=1e-4, device="cpu", **SMALL)
    scratch = train(CORPUS.encode(), cfg)
    tuned = train(CORPUS.encode(), cfg, init_from=trained.files)
    assert tuned.steps_done == 5  # step 0 again: a fine-tune is a new run
    assert tuned.final_loss < scratch.final_loss - 0.5  # it starts from what the base learned
    with pytest.raises(ValueError, match="base model has shape"):
        train(CORPUS.encode(), TrainConfig(steps=1, warmup=0, device="cpu", **{**SMALL, "n_embd": 128}), init_from=trained.files)


def test_corpus_shorter_than_a_block_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least block_size"):
        train(b"x" * 32, TrainConfig(steps=1, warmup=0, device="cpu", **SMALL))


def test_torch_threads_env_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLON_TORCH_THREADS", "lots")
    with pytest.raises(ValueError, match="PYLON_TORCH_THREADS"):
        train(CORPUS.encode(), TrainConfig(steps=1, warmup=0, device="cpu", **SMALL))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": "300"}, "steps"),
        ({"batch_size": True}, "batch_size"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": 2.0}, "weight_decay"),
        ({"n_embd": 100, "n_head": 3}, "n_embd"),
        ({"warmup": 500}, "warmup"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
        ({"epochs": 3}, "epochs"),
    ],
)
def test_train_config_rejects_bad_values(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidTrainConfig, match=field) as info:
        TrainConfig.from_dict(data)
    assert field in [f for f, _ in info.value.violations]
    assert isinstance(info.value, ValueError)


def test_train_config_accepts_a_valid_dict() -> None:
    cfg = TrainConfig.from_dict({"steps": 10, "lr": 1, "warmup": 2, "device": "cpu"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_generate_respects_max_tokens(runner: ModelRunner) -> None:
    pieces = list(runner.generate("pack my", max_tokens=17, temperature=0.8, seed=3))
    assert len(pieces) == 17
    assert [p.finish_reason for p in pieces] == [None] * 16 + ["length"]
    assert pieces[-1].completion_tokens == 17 and pieces[-1].prompt_tokens == len(b"pack my")


def test_generate_stops_before_a_stop_string(runner: ModelRunner) -> None:
    full = text_of(list(runner.generate("the quick", max_tokens=40, temperature=0)))
    stop = full[10:15]
    cut = full.find(stop)
    pieces = list(runner.generate("the quick", max_tokens=40, temperature=0, stop=["zzz", stop]))
    assert text_of(pieces) == full[:cut]
    assert pieces[-1].finish_reason == "stop"
    assert pieces[-1].completion_tokens == cut + len(stop.encode())
    # The stop string's bytes were held back, never streamed and then retracted.
    assert all(stop not in p.text for p in pieces)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"seed": -5}, "seed"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_generate_validates_arguments_eagerly(
    runner: ModelRunner, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        runner.generate("hi", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "prompt",
    [
        "the",  # the cache grows token by token, fills up, then the window slides
        "pack my box with five dozen liquor jugs!\nthe",  # longer than block_size (32)
    ],
)
def test_kv_cache_generation_equals_full_recompute(trained: Trained, prompt: str) -> None:
    """Incremental decoding with the cache must pick exactly the tokens recomputation picks."""
    cached = ModelRunner.from_files(trained.files, "cpu")
    uncached = ModelRunner.from_files(trained.files, "cpu", use_kv_cache=False)
    a = [t for p in cached.generate(prompt, max_tokens=80, temperature=0) for t in p.token_ids]
    b = [t for p in uncached.generate(prompt, max_tokens=80, temperature=0) for t in p.token_ids]
    assert a == b == reference_greedy(cached.model, prompt, 80)


def reference_greedy(model: GPT, prompt: str, n: int) -> list[int]:
    """Plain greedy decoding with no cache: the definition the engine must reproduce."""
    ids = ByteTokenizer().encode(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            window = torch.tensor([(ids + out)[-model.config.block_size :]])
            out.append(int(model(window, use_cache=False)[0][0, -1].argmax()))
    return out


def test_empty_prompt_still_generates(runner: ModelRunner) -> None:
    pieces = list(runner.generate("", max_tokens=5, temperature=0))
    assert len(pieces) == 5 and pieces[-1].prompt_tokens == 0


def test_cached_forward_in_chunks_matches_one_full_forward() -> None:
    """Several new tokens on top of a cache need a bottom-right causal mask."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_embd=32)).eval()
    idx = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        head, cache = model(idx[:, :7])
        middle, cache = model(idx[:, 7:8], cache)
        tail, cache = model(idx[:, 8:], cache)
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(1, 13, dtype=torch.long), cache)
    assert torch.allclose(torch.cat([head, middle, tail], dim=1), full, atol=1e-5)
    assert cache is not None and cache[0][0].shape == (2, 4, 20, 8)
