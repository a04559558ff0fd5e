"""The scheduler's leader process: ``python -m pylon_services.scheduler.leader``.

Wiring only: settings -> Redis ledger, state and lease + Ray executor -> the leader loop
(``orchestration/leader.py``). Run one or more beside the API (``python -m
pylon_services.scheduler``); only the holder of the Redis lease acts, the others wait to take
over. The API never runs a leader, so compose and Helm run the two as separate containers and
restart them independently; ``pylon up`` starts both. The leader is the only scheduler process
that joins Ray; it publishes what it sees of the cluster to Redis for the API.

SIGTERM or SIGINT gives the lease back at once and exits 0. Prometheus metrics are served on
``PYLON_METRICS_PORT`` (0 picks a free port, -1 disables).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, start_http_server
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from pylon_services.runtime.jsonlog import setup_logging
from pylon_services.runtime.loop import run as run_loop
from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.orchestration.leader import Leader
from pylon_services.scheduler.registrar import RegistryRegistrar
from pylon_services.scheduler.store.ray_exec import RayExecutor
from pylon_services.scheduler.store.redis_jobs import JobStore
from pylon_services.scheduler.store.redis_lease import RedisLease
from pylon_services.scheduler.store.redis_sched import SchedState
from pylon_services.scheduler.worker.launcher import Launcher

log = logging.getLogger("pylon.scheduler")
METRICS_EVERY_S = 1.0
STOP_WAIT_S = 10.0  # how long the loop may take to end its turn after SIGTERM
LEADING = Gauge("pylon_scheduler_leading", "1 while this process holds the scheduler's lease")
PASSES = Counter("pylon_scheduler_passes_total", "Policy passes run by this process", ["kind"])
PENDING = Gauge("pylon_scheduler_pending_jobs", "Jobs in the leader's backlog")


def executor_for(settings: Settings, cfg: SchedulerConfig) -> RayExecutor:
    """The Ray executor a leader uses; workers get the settings without the admin key."""
    return RayExecutor(settings.ray_address, settings.model_dump(exclude={"admin_key"}), Launcher,
                       settings.ray_node_ip_address, cfg.instance)


def build_leader(settings: Settings, cfg: SchedulerConfig, redis: aioredis.Redis, executor: RayExecutor) -> Leader:
    return Leader(JobStore(redis, track_changes=True), SchedState(redis), executor, RedisLease(redis), cfg,
                  registrar=RegistryRegistrar(settings, redis))


async def _export_metrics(leader: Leader) -> None:
    seen = {"whole": 0, "append": 0}
    while True:
        LEADING.set(1 if leader.leading else 0)
        PENDING.set(leader.backlog.size)
        for kind, total in (("whole", leader.passes.whole_passes), ("append", leader.passes.append_passes)):
            PASSES.labels(kind).inc(total - seen[kind])
            seen[kind] = total
        await asyncio.sleep(METRICS_EVERY_S)


async def serve(settings: Settings, cfg: SchedulerConfig) -> None:
    """Join Ray, lead (or stand by) until SIGTERM/SIGINT, then give the lease back."""
    redis = aioredis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 8),
                              retry_on_error=[RedisConnectionError])
    executor = executor_for(settings, cfg)
    await asyncio.to_thread(executor.connect)
    leader = build_leader(settings, cfg, redis, executor)
    if settings.metrics_port >= 0:
        start_http_server(settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(leader.run()), asyncio.create_task(_export_metrics(leader))]
    log.info("scheduler leader process %s started (policy %s)", leader.identity, cfg.policy)
    try:
        await stop.wait()
    finally:
        leader.stopping = True
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        try:
            await asyncio.wait_for(leader.stop(), STOP_WAIT_S)  # give the lease back at once
        finally:
            await redis.aclose()
        if pending:  # asyncio.run would wait for them forever: leave now (the lease is back)
            log.error("scheduler leader process %s: its loop did not end in %.0fs; exiting", leader.identity,
                      STOP_WAIT_S)
            os._exit(0)
        log.info("scheduler leader process %s stopped", leader.identity)


def main() -> None:
    settings = Settings()
    setup_logging("scheduler-leader", settings.log_level)
    run_loop(serve(settings, SchedulerConfig()))


if __name__ == "__main__":
    main()
