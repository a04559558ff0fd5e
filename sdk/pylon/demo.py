"""``pylon demo``: the walking skeleton, every step real.

Upload a corpus -> dataset version; tokenize it into BPE token shards; train a Llama-architecture
model (the ``tiny`` preset of the ``causal-lm`` trainer) through the scheduler on Ray, which
registers its Hugging Face output as a model version with lineage and aliases it ``prod``; deploy
it; stream generated text from the gateway over gRPC and, with the stock ``openai`` client, over
its OpenAI-compatible HTTP API. Each step prints what it did and how long it took.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pylon.client import Client
from pylon.demo_corpus import build_corpus

Out = Callable[[str], None]
MODEL = "stdlib-lm"
VOCAB_SIZE = 1024


@contextmanager
def step(out: Out, title: str, timings: list[tuple[str, float]]) -> Iterator[None]:
    out(f"\n▶ {title}")
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    timings.append((title, dt))
    out(f"  ✓ {dt:.1f}s")


def run_demo(client: Client, *, steps: int = 300, prompt: str = "Return the ", out: Out = print,
             max_tokens: int = 120, openai_base_url: str = "") -> dict[str, Any]:
    """Run the whole path against a running platform; returns what it created. With
    ``openai_base_url`` (the gateway's ``http://host:port/v1``) the last step streams through the
    ``openai`` client too."""
    timings: list[tuple[str, float]] = []
    result: dict[str, Any] = {}
    with step(out, "Upload a corpus (Python standard-library docstrings) as a dataset version", timings):
        # One record per docstring: the tokenizer ends each document with its EOS token, so the
        # model learns whole docstrings, not single lines.
        docs = build_corpus().strip().split("\n\n")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "stdlib-docs.jsonl")
            with open(path, "w") as f:
                f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
            ds = client.datasets.upload(path, "stdlib-docs", format="jsonl", description="Python docstrings")
        out(f"  {ds.name}: {ds.record_count} docstrings, {ds.size_bytes} bytes, {ds.digest[:19]}…"
            + (" (bytes already stored: deduplicated)" if ds.deduplicated else ""))
        result["dataset_version"] = ds
    with step(out, "Tokenize it: a byte-level BPE trained on it, token shards", timings):
        tok = client.datasets.tokenize(ds.name.split("/")[3], ds.version, tokenizer="stdlib-bpe",
                                       vocab_size=VOCAB_SIZE, shard_tokens=1 << 16)
        out(f"  {tok.name}: {tok.total_tokens} tokens in {tok.shard_count} shard(s), vocabulary {tok.vocab_size}")
        result["tokenization"] = tok
    with step(out, f"Train a Llama-architecture model (preset tiny) for {steps} steps on CPU, scheduled on Ray", timings):
        job = client.jobs.submit({
            "display_name": "demo causal-lm", "workers": 1, "resources": {"cpus": 2}, "checkpoint_every_steps": 100,
            "total_steps": steps,
            "trainer": {"trainer": "causal-lm", "datasets": [ds.name],
                        "config": {"preset": "tiny", "seq_len": 128, "batch_size": 16, "steps": steps, "lr": 3e-3,
                                   "warmup": min(20, steps // 5), "log_every": max(1, min(50, steps // 6)),
                                   "eval_fraction": 0.05},
                        "register_model": {"model": MODEL, "alias": "prod"}}})
        out(f"  submitted {job.name}")
        for line in client.jobs.logs(job.name, follow=True):
            out(f"  │ {line}")
        job = client.jobs.wait(job.name)
        if job.state != "succeeded":
            raise RuntimeError(f"training job {job.state}: {job.message}\n" + "\n".join(job.last_log_lines))
        out(f"  {job.name} {job.state} on pool {job.gpu_type}; Hugging Face model files at {job.output_uri}")
        result["job"] = job
    with step(out, "Registered on success: a model version with lineage, alias prod", timings):
        deadline = time.time() + 120
        while not job.registered_model_version and "failed" not in job.message and time.time() < deadline:
            time.sleep(0.5)
            job = client.jobs.get(job.name)
        if not job.registered_model_version:
            raise RuntimeError(f"the job's output was not registered: {job.message}")
        mv = client.models.resolve(f"models:/{MODEL}@prod")
        out(f"  {mv.name} ({mv.format}, {len(mv.files)} files, {mv.digest[:19]}…); prod -> v{mv.version}")
        result["model_version"] = mv
    with step(out, f"Deploy models:/{MODEL}@prod (an engine replica runs as a scheduler job)", timings):
        dep_id = f"{MODEL}-{int(time.time()) % 100000}"
        dep = client.deployments.deploy(dep_id, f"models:/{MODEL}@prod", replicas=1)
        out(f"  {dep.name}: {dep.state} ({dep.message}), serving {dep.model_version}")
        result["deployment"] = dep
    with step(out, f"Stream generated text from the gateway (prompt {prompt!r})", timings):
        pieces: list[str] = []
        first_token_s = None
        t0 = time.perf_counter()
        text_line = prompt
        for piece in client.generate_stream(dep.name, prompt, max_tokens=max_tokens, temperature=0.8, seed=0):
            if first_token_s is None:
                first_token_s = time.perf_counter() - t0
            pieces.append(piece.text)
            text_line += piece.text
        out("  " + text_line.replace("\n", "\n  "))
        result["completion"] = "".join(pieces)
        out(f"  first token after {first_token_s or 0:.2f}s, {len(''.join(pieces))} characters")
    if openai_base_url:
        with step(out, f"The same through the OpenAI-compatible API with the openai client ({openai_base_url})",
                  timings):
            result["openai_completion"] = _openai_stream(client, openai_base_url, dep.name, prompt, max_tokens, out)
    with step(out, "Lineage of the served version", timings):
        graph = client.models.lineage(MODEL, mv.version)
        for e in graph.edges:
            out(f"  {e.source}  →  {e.target}")
        result["lineage"] = graph
    client.deployments.delete(dep.name)
    out("\nTimings: " + ", ".join(f"{t.split(' ')[0].lower()} {d:.1f}s" for t, d in timings)
        + f"; total {sum(d for _, d in timings):.1f}s")
    result["timings"] = timings
    return result


def _openai_stream(client: Client, base_url: str, deployment: str, prompt: str, max_tokens: int, out: Out) -> str:
    """Stream a chat-free completion with the stock ``openai`` client (not a dependency of the SDK:
    the step says so and is skipped where it is not installed)."""
    try:
        from openai import OpenAI
    except ImportError:
        out("  skipped: the openai package is not installed (pip install openai)")
        return ""
    oa = OpenAI(base_url=base_url, api_key=client.token, max_retries=0)
    text = ""
    for chunk in oa.completions.create(model=deployment.rsplit("/", 1)[-1], prompt=prompt, max_tokens=max_tokens,
                                       temperature=0.8, seed=0, stream=True):
        text += chunk.choices[0].text if chunk.choices else ""
    out("  " + (prompt + text).replace("\n", "\n  "))
    return text
