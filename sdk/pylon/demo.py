"""``pylon demo``: the walking skeleton, every step real.

Upload a corpus -> dataset version; train a tiny GPT through the scheduler on Ray; register the
checkpoint as a model version with lineage; alias it ``prod``; deploy it; stream generated text
from the gateway. Each step prints what it did and how long it took.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pylon.client import Client
from pylon.demo_corpus import build_corpus

Out = Callable[[str], None]


@contextmanager
def step(out: Out, title: str, timings: list[tuple[str, float]]) -> Iterator[None]:
    out(f"\n▶ {title}")
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    timings.append((title, dt))
    out(f"  ✓ {dt:.1f}s")


def run_demo(client: Client, *, steps: int = 300, prompt: str = "Return the ", out: Out = print,
             max_tokens: int = 120) -> dict[str, Any]:
    """Run the whole path against a running platform; returns what it created."""
    timings: list[tuple[str, float]] = []
    result: dict[str, Any] = {}
    with step(out, "Upload a corpus (Python standard-library docstrings) as a dataset version", timings):
        corpus = build_corpus()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "stdlib-docs.txt")
            with open(path, "w") as f:
                f.write(corpus)
            ds = client.datasets.upload(path, "stdlib-docs", format="text", description="Python docstrings")
        out(f"  {ds.name}: {ds.record_count} lines, {ds.size_bytes} bytes, {ds.digest[:19]}…"
            + (" (bytes already stored: deduplicated)" if ds.deduplicated else ""))
        result["dataset_version"] = ds
    with step(out, f"Train a tiny GPT for {steps} steps on CPU, scheduled on Ray", timings):
        job = client.jobs.submit({
            "display_name": "demo tiny-gpt", "workers": 1, "resources": {"cpus": 1},
            "trainer": {"trainer": "tiny-gpt", "datasets": [ds.name],
                        "config": {"steps": steps, "batch_size": 16, "block_size": 128, "log_every": 50}}})
        out(f"  submitted {job.name}")
        for line in client.jobs.logs(job.name, follow=True):
            out(f"  │ {line}")
        job = client.jobs.wait(job.name)
        if job.state != "succeeded":
            raise RuntimeError(f"training job {job.state}: {job.message}\n" + "\n".join(job.last_log_lines))
        out(f"  {job.name} {job.state} on pool {job.gpu_type}; checkpoint {job.output_uri}")
        result["job"] = job
    with step(out, "Register the checkpoint as a model version with lineage, alias it prod", timings):
        digests = job.spec.get("trainer", {}).get("dataset_digests") or [ds.digest]
        mv = client.models.register("tiny-gpt", source_uri=job.output_uri, metrics={"loss": float(job.metrics.get("loss", 0))},
                                    job=job.name, datasets=[ds.name], dataset_digests=digests,
                                    description="pylon demo")
        alias = client.models.set_alias("tiny-gpt", "prod", mv.version)
        out(f"  {mv.name} ({len(mv.files)} files, {mv.digest[:19]}…); prod -> v{alias.version}")
        result["model_version"] = mv
    with step(out, "Deploy models:/tiny-gpt@prod (an engine replica runs as a scheduler job)", timings):
        dep_id = f"tiny-gpt-{int(time.time()) % 100000}"
        dep = client.deployments.deploy(dep_id, "models:/tiny-gpt@prod", replicas=1)
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
    with step(out, "Lineage of the served version", timings):
        graph = client.models.lineage("tiny-gpt", mv.version)
        for e in graph.edges:
            out(f"  {e.source}  →  {e.target}")
        result["lineage"] = graph
    client.deployments.delete(dep.name)
    out("\nTimings: " + ", ".join(f"{t.split(' ')[0].lower()} {d:.1f}s" for t, d in timings)
        + f"; total {sum(d for _, d in timings):.1f}s")
    result["timings"] = timings
    return result
