"""A serving load generator: ``pylon bench serve`` and ``benchmarks/serve_bench.py``.

Requests arrive as a Poisson process at ``rate`` per second (``inf``: all at once), at most
``concurrency`` in flight, against the gateway over gRPC (``Generate``), over HTTP (the
OpenAI-compatible ``/v1/completions`` with SSE) or one engine replica directly (EngineService
``Generate`` with the platform's internal key). The figures are vLLM's ``benchmark_serving``:
TTFT, TPOT (per request: time after the first token over the tokens after it), ITL (every gap
between streamed pieces), end-to-end latency, their mean and percentiles, request and token
throughput, and goodput: requests per second that met every SLO given (``ttft``, ``tpot``,
``e2el`` in milliseconds).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np

TARGETS = ("grpc", "http", "engine")
WORDS = ("data model token cache layer queue batch engine prompt answer shard replica gateway tensor kernel "
         "stream tenant quota budget latency").split()


@dataclass(frozen=True)
class Workload:
    num_prompts: int = 100
    prompt_words: int = 32  # per request, after the shared prefix
    max_tokens: int = 32
    shared_prefix_words: int = 0  # >0: the shared-prefix workload (a long system prompt per group)
    prefix_groups: int = 4  # distinct shared prefixes, requests spread over them at random
    seed: int = 0

    def prompts(self) -> list[str]:
        """The requests' prompts: random words, after their group's shared prefix when there is one."""
        rng = random.Random(self.seed)
        groups = [" ".join(rng.choice(WORDS) for _ in range(self.shared_prefix_words)) + f" [group {g}] "
                  for g in range(self.prefix_groups)] if self.shared_prefix_words else [""]
        return [rng.choice(groups) + " ".join(rng.choice(WORDS) for _ in range(self.prompt_words))
                for _ in range(self.num_prompts)]


@dataclass(frozen=True)
class Target:
    kind: str  # one of TARGETS
    address: str  # gRPC host:port, or the HTTP base URL (".../v1")
    token: str  # an API key (gateway) or the platform's internal key (engine)
    deployment: str = ""  # the gateway's deployment or model (not used for an engine)


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


async def run(target: Target, workload: Workload, rate: float = float("inf"), concurrency: int = 0,
              session_ids: bool = False, slos: dict[str, float] | None = None) -> dict[str, Any]:
    """Send the workload, then its figures (``summarize``, goodput against ``slos``);
    ``session_ids`` sends an ``x-session-id`` per prefix group."""
    prompts = workload.prompts()
    rng = np.random.default_rng(workload.seed)
    limit = asyncio.Semaphore(concurrency) if concurrency > 0 else None
    send = sender(target, workload.max_tokens)

    async def one(i: int, prompt: str) -> Result:
        session = f"s{prompt.split('[group ')[1].split(']')[0]}" if session_ids and "[group " in prompt else ""
        if limit is None:
            return await timed(send(prompt, session, i))
        async with limit:
            return await timed(send(prompt, session, i))

    tasks = []
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        tasks.append(asyncio.ensure_future(one(i, prompt)))
        if rate != float("inf") and i + 1 < len(prompts):
            await asyncio.sleep(float(rng.exponential(1.0 / rate)))
    results = await asyncio.gather(*tasks)
    return summarize(results, time.perf_counter() - start, slos)


async def timed(pieces: AsyncIterator[int]) -> Result:
    """Time one stream of pieces (each the count of tokens it carried)."""
    start = time.perf_counter()
    r = Result(ok=False)
    last = start
    try:
        async for n in pieces:
            now = time.perf_counter()
            if not n:
                continue
            if r.output_tokens == 0:
                r.ttft = now - start
            else:
                r.itl.append(now - last)
            last = now
            r.output_tokens += n
        r.e2e = time.perf_counter() - start
        r.ok = r.output_tokens > 0
    except (grpc.RpcError, OSError, ValueError) as e:
        code = e.code() if isinstance(e, grpc.RpcError) and hasattr(e, "code") else None
        r.error = code.name if code is not None else f"{type(e).__name__}: {e}"[:200]
    return r


def sender(target: Target, max_tokens: int) -> Any:
    """A function of (prompt, session id, index) that starts one request to ``target`` and returns
    its stream of pieces (each the count of tokens it carried), for ``timed``."""
    if target.kind == "http":
        return lambda prompt, session, i: _http_stream(target, prompt, max_tokens, session)
    channel = grpc.aio.insecure_channel(target.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    md_base = [("authorization", f"Bearer {target.token}")]
    if target.kind == "engine":
        from pylon.engine.v1 import engine_pb2, engine_pb2_grpc

        engine = engine_pb2_grpc.EngineServiceStub(channel)

        def engine_call(prompt: str, session: str, i: int) -> AsyncIterator[int]:
            req = engine_pb2.GenerateRequest(request_id=f"bench-{i}-{random.getrandbits(32):08x}", prompt=prompt,
                                             sampling=_sampling(engine_pb2, max_tokens))
            return _counts(engine.Generate(req, metadata=md_base, timeout=600))
        return engine_call
    from pylon.client import _target
    from pylon.engine.v1 import engine_pb2
    from pylon.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    names = _target(target.deployment)  # a deployment's id or name, or a model reference, as the SDK reads it

    def gateway_call(prompt: str, session: str, i: int) -> AsyncIterator[int]:
        req = gateway_pb2.GenerateRequest(prompt=prompt, sampling=_sampling(engine_pb2, max_tokens),
                                          **names)
        md = md_base + ([("x-session-id", session)] if session else [])
        return _counts(gateway.Generate(req, metadata=md, timeout=600))
    return gateway_call


def _sampling(engine_pb2: Any, max_tokens: int) -> Any:
    return engine_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


async def _counts(call: Any) -> AsyncIterator[int]:
    async for response in call:
        yield len(response.token_ids)


async def _http_stream(target: Target, prompt: str, max_tokens: int, session: str) -> AsyncIterator[int]:
    """POST /v1/completions with ``stream: true`` over a plain asyncio connection (HTTP/1.1,
    chunked SSE), one piece per event that carries text."""
    url = urlsplit(target.address.rstrip("/") + "/completions")
    body = json.dumps({"model": target.deployment, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    headers = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json",
               f"Authorization: Bearer {target.token}", f"Content-Length: {len(body)}", "Connection: close"]
    if session:
        headers.append(f"x-session-id: {session}")
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    try:
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        status = (await reader.readline()).split()
        if len(status) < 2 or status[1] != b"200":
            raise ValueError(f"HTTP {status[1].decode() if len(status) > 1 else '?'}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        buffer = b""
        async for chunk in _chunks(reader):
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    return
                doc = json.loads(data)
                if "error" in doc:
                    raise ValueError(doc["error"].get("code") or "error")
                yield 1 if any(c.get("text") for c in doc.get("choices", ())) else 0
    finally:
        writer.close()


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The body of a chunked HTTP response, chunk by chunk."""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readline()


def _stats(values: Sequence[float], ms: bool = True) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    a = np.asarray(values) * (1000.0 if ms else 1.0)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99))}


def summarize(results: Sequence[Result], duration: float, slos: dict[str, float] | None = None) -> dict[str, Any]:
    """vLLM's figures over the results (latencies in milliseconds); goodput when ``slos`` are given
    (``{"ttft": ms, "tpot": ms, "e2el": ms}``, any of them)."""
    done = [r for r in results if r.ok]
    tpots = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    out: dict[str, Any] = {
        "requests": len(results), "completed": len(done), "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if r.error}), "duration_s": duration,
        "request_throughput": len(done) / duration if duration else 0.0,
        "output_throughput": sum(r.output_tokens for r in done) / duration if duration else 0.0,
        "ttft_ms": _stats([r.ttft for r in done]), "tpot_ms": _stats(tpots),
        "itl_ms": _stats([g for r in done for g in r.itl]), "e2el_ms": _stats([r.e2e for r in done]),
        "results": [asdict(r) for r in results]}
    if slos:
        out["goodput"] = goodput(done, duration, slos)
    return out


def goodput(done: Sequence[Result], duration: float, slos: dict[str, float]) -> float:
    """Requests per second that met every SLO (milliseconds), as vLLM's ``--goodput``."""
    def meets(r: Result) -> bool:
        tpot = (r.e2e - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
        values = {"ttft": r.ttft, "tpot": tpot, "e2el": r.e2e}
        return all(values[k] * 1000.0 <= v for k, v in slos.items())
    return sum(meets(r) for r in done) / duration if duration else 0.0


def parse_slos(items: Sequence[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` as ``{"ttft": 500.0, "tpot": 50.0}``; ValueError naming a bad one."""
    out = {}
    for item in (part for raw in items for part in raw.replace(",", " ").split()):
        key, _, value = item.partition(":")
        if key not in ("ttft", "tpot", "e2el") or not value:
            raise ValueError(f"--goodput takes ttft:MS, tpot:MS or e2el:MS, got {item!r}")
        out[key] = float(value)
    return out


def report(summary: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    lines = [f"requests {summary['completed']}/{summary['requests']} completed in {summary['duration_s']:.2f}s"
             + (f"; errors: {', '.join(summary['errors'])}" if summary["errors"] else ""),
             f"throughput {summary['request_throughput']:.2f} req/s, {summary['output_throughput']:.1f} output tok/s"
             + (f"; goodput {summary['goodput']:.2f} req/s" if "goodput" in summary else "")]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        s = summary[key]
        lines.append(f"{key[:-3].upper():5} ms  mean {s['mean']:8.2f}  p50 {s['p50']:8.2f}  p90 {s['p90']:8.2f}  "
                     f"p99 {s['p99']:8.2f}")
    return "\n".join(lines)
