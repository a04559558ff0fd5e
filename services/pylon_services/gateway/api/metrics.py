"""The gateway's Prometheus metrics, per deployment and tenant, on the process's metrics port
(``PYLON_METRICS_PORT``, served by ``runtime/server.py`` from the default registry).

Latencies are as the caller sees them through the gateway, under vLLM's bucket bounds
(``engines/metrics.py``) so one dashboard reads both: time to first token, time per output
token after the first (TPOT: one value per request), the time between streamed pieces (ITL),
and the whole request. Label children are cached per (deployment, tenant): looking them up per
piece would cost a lock and a tuple build every time.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from pylon_services.engines.metrics import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS

_LABELS = ["deployment", "tenant"]
TTFT = Histogram("pylon_gateway_time_to_first_token_seconds", "Time from a request's arrival to its first token",
                 _LABELS, buckets=TTFT_BUCKETS)
TPOT = Histogram("pylon_gateway_time_per_output_token_seconds",
                 "Per request: time after the first token divided by the tokens after it", _LABELS,
                 buckets=ITL_BUCKETS)
ITL = Histogram("pylon_gateway_inter_token_latency_seconds", "Time between a stream's pieces", _LABELS,
                buckets=ITL_BUCKETS)
E2E = Histogram("pylon_gateway_e2e_request_latency_seconds", "Time from a request's arrival to its end", _LABELS,
                buckets=E2E_BUCKETS)
PROMPT_TOKENS = Counter("pylon_gateway_prompt_tokens", "Prompt tokens of the requests served", _LABELS)
GENERATION_TOKENS = Counter("pylon_gateway_generation_tokens", "Tokens generated for the requests served", _LABELS)
REQUESTS = Counter("pylon_gateway_requests", "Requests relayed, by how they ended (OK or the status code)",
                   [*_LABELS, "code"])
THROTTLED = Counter("pylon_gateway_throttled_requests", "Requests refused or held by admission, by reason",
                    [*_LABELS, "reason"])
ROUTED = Counter("pylon_gateway_routing_decisions", "Replica choices, by reason: session, prefix_hit, prefix_miss, "
                 "least_load, round_robin, retry", ["deployment", "decision"])


class RequestMetrics:
    """The cached label children of one (deployment, tenant)."""

    __slots__ = ("ttft", "tpot", "itl", "e2e", "prompt", "generated", "deployment", "tenant")

    def __init__(self, deployment: str, tenant: str) -> None:
        self.deployment, self.tenant = deployment, tenant
        self.ttft = TTFT.labels(deployment, tenant)
        self.tpot = TPOT.labels(deployment, tenant)
        self.itl = ITL.labels(deployment, tenant)
        self.e2e = E2E.labels(deployment, tenant)
        self.prompt = PROMPT_TOKENS.labels(deployment, tenant)
        self.generated = GENERATION_TOKENS.labels(deployment, tenant)

    def ended(self, code: str, start: float, first: float | None, end: float, prompt_tokens: int,
              generated: int, per_sequence: int) -> None:
        """One request's end: its latencies (those it reached) and token counts; TPOT over the
        tokens of one sequence (``per_sequence``) when ``n`` sequences streamed together."""
        self.e2e.observe(end - start)
        if first is not None and per_sequence > 1:
            self.tpot.observe((end - first) / (per_sequence - 1))
        self.prompt.inc(prompt_tokens)
        self.generated.inc(generated)
        _counter(REQUESTS, (self.deployment, self.tenant, code)).inc()


_CACHE: dict[tuple[str, str], RequestMetrics] = {}
_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}
MAX_CACHED = 10_000  # (deployment, tenant) pairs; beyond it the cache starts over (children stay registered)


def for_request(deployment: str, tenant: str) -> RequestMetrics:
    key = (deployment, tenant)
    m = _CACHE.get(key)
    if m is None:
        if len(_CACHE) >= MAX_CACHED:
            _CACHE.clear()
        m = _CACHE[key] = RequestMetrics(deployment, tenant)
    return m


def _counter(metric: Counter, labels: tuple[str, ...]) -> Any:
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        if len(_CHILDREN) >= MAX_CACHED:
            _CHILDREN.clear()
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def throttled(deployment: str, tenant: str, reason: str) -> None:
    """Count a request that admission refused (``reason``: "tenant_requests_per_min",
    "tenant_tokens_per_min", "key_requests_per_min", "key_tokens_per_min", "concurrency",
    "queue_full", "queue_wait" or "redis_unavailable"). ``deployment`` is
    the deployment's name (``tenants/{t}/deployments/{d}``) or the model reference the request
    gave when it was refused before resolution."""
    _counter(THROTTLED, (deployment, tenant, reason)).inc()


def routed(deployment: str, decision: str) -> None:
    """Count one replica choice (``Decision.reason``, or "retry" for a retry on another replica)."""
    _counter(ROUTED, (deployment, decision)).inc()
