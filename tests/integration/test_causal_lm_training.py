"""The causal-lm trainer end to end without the scheduler (a context of the tests' own over a real
local object store): BPE token shards in, Hugging Face model out; exact resume; data-parallel
equivalence; divergence and corrupt checkpoints. The scheduler-driven paths (preemption by a
higher-priority job, registration) are in test_causal_lm_jobs.py."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from pylon.demo_corpus import build_corpus
from pylon_services.ingest.domain.tokenize import train_tokenizer, write_token_shards
from pylon_services.localstack.procs import free_port
from pylon_services.storage.local import LocalObjectStore
from tests.support.trainer_ctx import run_rank

torch = pytest.importorskip("torch")

TOKENIZER_KEY = "tenants/acme/tokenizers/docs.json"
INDEX_KEY = "tenants/acme/datasets/docs/shards/index.json"
MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 64}
# Losses of two CPU runs that must compute the same thing: resume is bitwise in practice; DDP's
# bucketed gradient all-reduce sums in another order than one process does.
RESUME_TOL = 1e-6
DDP_TOL = 2e-4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenized corpus in a local object store, laid out as ingest lays it out."""
    root = tmp_path_factory.mktemp("lm")
    store = LocalObjectStore(root / "store")
    lines = [x for x in build_corpus(max_bytes=80_000).split("\n") if x.strip()]
    tok = train_tokenizer(lines, vocab_size=512)
    store.put(TOKENIZER_KEY, tok.to_str().encode())
    index = write_token_shards(lines, tok, lambda i, data: store.put(INDEX_KEY.replace("index.json", f"shard-{i:06d}.bin"), data),
                               shard_tokens=4096)
    store.put(INDEX_KEY, json.dumps(index).encode())
    return root


def workload(**config: Any) -> dict[str, Any]:
    base = {"preset": "tiny", "model": MODEL, "seq_len": 32, "batch_size": 4, "steps": 12, "lr": 3e-3,
            "warmup": 2, "log_every": 1, "eval_fraction": 0.05, "seed": 7}
    return {"trainer": "causal-lm", "config": {**base, **config},
            "datasets": ["tenants/acme/datasets/docs/versions/1"],
            "token_data": [{"dataset_version": "tenants/acme/datasets/docs/versions/1", "tokenizer_object_key": TOKENIZER_KEY,
                            "index_object_key": INDEX_KEY}]}


def run_in(root: Path, name: str, wl: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """One rank in this process, on a copy of the data under its own job (its own checkpoints)."""
    return run_rank(str(root / "store"), wl, 0, 1, free_port(), job_id=name, **kwargs)


def losses(run: dict[str, Any]) -> dict[int, float]:
    return {step: m["loss"] for step, _, m in run["progress"]}


def test_training_writes_a_hugging_face_model_that_transformers_loads(data_root: Path, tmp_path: Path) -> None:
    run = run_in(data_root, "full", workload(eval_every=6))
    assert run["result"]["exit_code"] == 0, run["lines"][-5:]
    lost = losses(run)
    assert sorted(lost) == list(range(1, 13)) and lost[12] < lost[1]
    store = LocalObjectStore(data_root / "store")
    out = run["result"]["output_uri"]
    names = {o.key[len(out) + 1:] for o in store.iter_all(out + "/")}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "loss_curve.png", "training_metrics.json"} <= names
    assert store.get(f"{out}/loss_curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
    for name in names:
        (tmp_path / name).write_bytes(store.get(f"{out}/{name}"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pylon_services.ml.hf import load_hf_model

    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    ours = load_hf_model(tmp_path).eval()
    ids = AutoTokenizer.from_pretrained(tmp_path)("Return the value of", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, ours(ids), atol=1e-4)
    assert "val_loss" in run["result"]["metrics"] and run["result"]["metrics"]["val_ppl"] > 1


def test_an_interrupted_run_resumed_gives_the_losses_of_an_uninterrupted_one(data_root: Path) -> None:
    whole = losses(run_in(data_root, "whole", workload(), checkpoint_every_steps=4))
    first = run_in(data_root, "split", workload(), checkpoint_every_steps=4, stop_after_step=5)
    assert first["result"]["exit_code"] == 75  # preempted: requeued, resumes
    stopped_at = first["result"]["step"]
    second = run_in(data_root, "split", workload(), checkpoint_every_steps=4)
    assert second["result"]["exit_code"] == 0
    assert any(f"resumed at step {stopped_at}" in line for line in second["lines"])
    joined = {**losses(first), **losses(second)}
    assert sorted(joined) == sorted(whole)
    for step, loss in whole.items():
        assert joined[step] == pytest.approx(loss, abs=RESUME_TOL), step


def test_two_workers_train_what_one_worker_of_the_same_global_batch_trains(data_root: Path) -> None:
    one = losses(run_in(data_root, "one", workload(batch_size=8, steps=8)))
    port = free_port()
    with mp.get_context("spawn").Pool(2) as pool:
        ranks = pool.starmap(run_rank, [(str(data_root / "store"), workload(batch_size=4, steps=8), r, 2, port)
                                        for r in range(2)], chunksize=1)
    assert all(r["result"]["exit_code"] == 0 for r in ranks), [r["lines"][-3:] for r in ranks]
    two = losses(ranks[0])
    assert sorted(two) == sorted(one) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=DDP_TOL), step
    assert not ranks[1]["progress"]  # the gang's figures are reported once, by rank 0


def test_a_diverging_run_fails_with_the_reason_and_keeps_its_last_good_checkpoint(data_root: Path) -> None:
    run = run_in(data_root, "nan", workload(lr=1e4, grad_clip=0.0, warmup=0, steps=40), checkpoint_every_steps=1)
    result = run["result"]
    assert result["exit_code"] == 1 and "the loss became" in result["error"], result
    kept = int(result["error"].split("(step ")[1].split(")")[0])
    store = LocalObjectStore(data_root / "store")
    assert 0 < kept <= result["step"]
    assert store.exists(f"tenants/acme/jobs/nan/checkpoint/step-{kept:012d}/manifest.json")


def test_a_corrupt_checkpoint_is_skipped_for_the_previous_one(data_root: Path) -> None:
    first = run_in(data_root, "corrupt", workload(), checkpoint_every_steps=4, stop_after_step=9)
    assert first["result"]["exit_code"] == 75
    store = LocalObjectStore(data_root / "store")
    newest = first["result"]["step"]
    key = f"tenants/acme/jobs/corrupt/checkpoint/step-{newest:012d}/rank-0/model.safetensors"
    blob = store.get(key)
    store.put(key, blob[: len(blob) // 2])  # truncated
    second = run_in(data_root, "corrupt", workload(), checkpoint_every_steps=4)
    assert second["result"]["exit_code"] == 0
    assert any("corrupt" in line for line in second["lines"]), second["lines"][:10]
    assert any("resumed at step 8" in line for line in second["lines"])



def test_gradient_accumulation_trains_what_one_larger_batch_trains(data_root: Path) -> None:
    """Two micro-batches of 4 make one step of the windows a batch of 8 holds."""
    big = losses(run_in(data_root, "big", workload(batch_size=8, steps=6)))
    accum = losses(run_in(data_root, "accum", workload(batch_size=4, grad_accum=2, steps=6)))
    assert sorted(accum) == sorted(big)
    for step in big:
        assert accum[step] == pytest.approx(big[step], rel=DDP_TOL), step


def test_checkpoints_are_also_written_every_few_minutes(data_root: Path) -> None:
    from pylon_services.workloads.checkpoints import checkpoint_steps

    run = run_in(data_root, "timed", workload(steps=12, checkpoint_every_minutes=0.0005), checkpoint_every_steps=10**6)
    assert run["result"]["exit_code"] == 0
    steps = checkpoint_steps(LocalObjectStore(data_root / "store"), "tenants/acme/jobs/timed/checkpoint/")
    assert steps and all(0 < s < 12 for s in steps)  # time-based only: no step-based one was due
