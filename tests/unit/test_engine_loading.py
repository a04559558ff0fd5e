"""What a replica loads (engines/replica.py): a registered version's files from the object store,
refused when an engine cannot serve them; and the causal-lm trainer's own output format (our
Llama written by ``ml/hf.write_hf_model`` with an ingest-trained tokenizer) served by the torch
engine exactly as transformers generates from it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pylon_services.common import blobs
from pylon_services.common.layout import model_version_key
from pylon_services.engines.contract import EngineRequest, SamplingOptions
from pylon_services.engines.replica import download_version, load_engine
from pylon_services.storage.local import LocalObjectStore
from tests.support.hf_models import trained_format_dir

TENANT = "acme"


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory in the trainer's output format: our Llama, ingest's BPE tokenizer, chat template."""
    return Path(trained_format_dir(tmp_path_factory.mktemp("trained"), extra_line="naïve café → résumé",
                                   vocab_size=400, corpus_chars=60_000, lines=400, hidden_size=64, layers=2))


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
    manifest = {"name": f"tenants/{TENANT}/models/{model}/versions/1", "version": 1, "state": "ready",
                "format": fmt, "files": files, "digest": blobs.manifest_digest(files), "create_time": 0.0}
    store.put(model_version_key(TENANT, model, 1), blobs.dump(manifest), if_none_match=True)
    return str(manifest["name"])


def test_the_trainers_output_is_served_as_transformers_generates_it(trained_dir: Path,
                                                                     tmp_path: Path) -> None:
    import transformers
    from tokenizers import Tokenizer

    torch.set_num_threads(1)
    store = LocalObjectStore(tmp_path / "store")
    out = tmp_path / "served"
    out.mkdir()
    download_version(store, TENANT, register(store, "trained", trained_dir, "hf_transformers"), out)
    engine = load_engine("torch", str(out), {"block_size": 4})
    prompt = "naïve café"
    ids = Tokenizer.from_file(str(out / "tokenizer.json")).encode(prompt).ids
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    expected = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0, len(ids):].tolist()

    async def run() -> list[int]:
        try:
            return [t async for o in engine.generate(EngineRequest("t", prompt=prompt, sampling=SamplingOptions(
                max_tokens=40, temperature=0.0))) for d in o.deltas for t in d.token_ids]
        finally:
            await engine.shutdown()

    assert asyncio.run(run()) == expected  # ends at the same EOS, or at the same length
    assert engine.info.max_model_len == 64


def test_versions_an_engine_cannot_serve_are_refused_with_the_reason(trained_dir: Path, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    with pytest.raises(ValueError, match="engines serve Hugging Face model directories; .* format 'onnx'"):
        download_version(store, TENANT, register(store, "an-onnx", trained_dir, "onnx"), tmp_path / "a")
    with pytest.raises(ValueError, match="leaves the model directory"):
        download_version(store, TENANT, register(store, "escape", trained_dir, "hf_transformers",
                                                 paths={"config.json": "../config.json"}), tmp_path / "b")
    with pytest.raises(ValueError, match="is not in tenant acme"):
        download_version(store, TENANT, "tenants/globex/models/m/versions/1", tmp_path / "c")
    other = tmp_path / "classifier"
    shutil.copytree(trained_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ValueError, match="cannot serve architecture .*LlamaForSequenceClassification"):
        load_engine("torch", str(other), {})
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("tensorrt", str(other), {})


def test_files_keep_their_relative_paths(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    source = tmp_path / "source"
    (source / "extra").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "extra" / "notes.txt").write_text("kept where it was")
    out = tmp_path / "out"
    out.mkdir()
    download_version(store, TENANT, register(store, "nested", source, "hf_transformers"), out)
    assert (out / "extra" / "notes.txt").read_text() == "kept where it was"
