"""A replica's Prometheus metrics under vLLM's names, so the gateway and external routers (and
dashboards built for vLLM) read either engine the same way.

Load and totals come from the engine's ``stats()`` at scrape time; latencies are observed by the
replica server per request: time to first token, the time between streamed tokens, and the
whole request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pylon_services.engines.contract import EngineStats

# vLLM's buckets (seconds), so dashboards and routers' thresholds carry over.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)


class _StatsCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self.stats, self.model_name = stats, model_name

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        labels = {"model_name": self.model_name}
        for name, doc, value in (
                ("vllm:num_requests_running", "Requests in the running batch", s.running),
                ("vllm:num_requests_waiting", "Requests waiting to run", s.waiting),
                ("vllm:kv_cache_usage_perc", "Fraction of the KV cache's blocks in use (1 = full)", s.kv_usage)):
            gauge = GaugeMetricFamily(name, doc, labels=list(labels))
            gauge.add_metric(list(labels.values()), value)
            yield gauge
        for name, doc, total in (
                ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache", s.prefix_cache_queries),
                ("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache", s.prefix_cache_hits),
                ("vllm:prompt_tokens", "Prompt tokens processed", s.prompt_tokens),
                ("vllm:generation_tokens", "Tokens generated", s.generation_tokens),
                ("vllm:num_preemptions", "Requests preempted for lack of KV blocks", s.preemptions)):
            counter = CounterMetricFamily(name, doc, labels=list(labels))
            counter.add_metric(list(labels.values()), total)
            yield counter


class EngineMetrics:
    """The replica's registry; ``observe_*`` are called by the server as a request streams."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, model_name))
        self.model_name = model_name
        self.ttft = self._histogram("vllm:time_to_first_token_seconds", "Time to the first token", TTFT_BUCKETS)
        self.itl = self._histogram("vllm:inter_token_latency_seconds", "Time between streamed tokens", ITL_BUCKETS)
        self.e2e = self._histogram("vllm:e2e_request_latency_seconds", "Time from arrival to the last token",
                                   E2E_BUCKETS)
        self._success = Counter("vllm:request_success", "Requests finished, by reason",
                                labelnames=["model_name", "finished_reason"], registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, labelnames=["model_name"], registry=self.registry,
                         buckets=buckets).labels(self.model_name)

    def finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()
