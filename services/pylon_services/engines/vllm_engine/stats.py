"""vLLM's scheduler and iteration stats folded into the port's ``EngineStats`` (vLLM-free).

vLLM hands a stat logger, after each engine step, the scheduler's snapshot (queue lengths, KV
usage, the step's prefix-cache lookups) and the step's iteration stats (tokens, preemptions).
``StatsSink`` keeps the latest snapshot and the running totals; ``snapshot`` is what ``stats()``
returns.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from pylon_services.engines.contract import EngineStats

RATE_WINDOW_S = 5.0


class StatsSink:
    """The latest scheduler snapshot plus totals since start, fed by vLLM's stat-logger hook."""

    def __init__(self, kv_blocks_total: int = 0, clock: Any = time.monotonic) -> None:
        self.kv_blocks_total = kv_blocks_total
        self._clock = clock
        self.waiting = 0
        self.running = 0
        self.kv_usage = 0.0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self._recent: deque[tuple[float, int]] = deque()  # (when, tokens generated in that step)

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """Fold one engine step's stats in (either may be None: vLLM sends what it has)."""
        if scheduler_stats is not None:
            self.waiting = scheduler_stats.num_waiting_reqs + getattr(scheduler_stats, "num_skipped_waiting_reqs", 0)
            self.running = scheduler_stats.num_running_reqs
            self.kv_usage = scheduler_stats.kv_cache_usage
            # Per-step deltas (the scheduler resets them after each snapshot); preempted
            # requests' second lookups are counted apart by vLLM and left out here, as in its
            # own vllm:prefix_cache_queries metric.
            prefix = scheduler_stats.prefix_cache_stats
            self.prefix_cache_queries += prefix.queries
            self.prefix_cache_hits += prefix.hits
        if iteration_stats is not None:
            self.prompt_tokens += iteration_stats.num_prompt_tokens
            self.generation_tokens += iteration_stats.num_generation_tokens
            self.preemptions += iteration_stats.num_preempted_reqs
            if iteration_stats.num_generation_tokens:
                self._recent.append((self._clock(), iteration_stats.num_generation_tokens))

    def snapshot(self) -> EngineStats:
        now = self._clock()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        return EngineStats(
            waiting=self.waiting,
            running=self.running,
            kv_blocks_used=round(self.kv_usage * self.kv_blocks_total),
            kv_blocks_total=self.kv_blocks_total,
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            preemptions=self.preemptions,
            tokens_per_s=sum(n for _, n in self._recent) / RATE_WINDOW_S,
        )


def stat_logger_factory(sink: StatsSink) -> Any:
    """A vLLM per-engine stat-logger factory that feeds ``sink`` (imports vLLM)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _SinkLogger(StatLoggerBase):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            sink.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _SinkLogger
