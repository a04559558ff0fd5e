"""The scheduler's leader loop in a child process of the API process.

Why: a policy pass over a big backlog is CPU-bound Python. On the API's event loop it stalled
every RPC for as long as it ran (and passes took up to a quarter of that loop's time); in its own
process the API keeps answering while the leader thinks. One command still starts a replica:
``python -m pylon_services.scheduler`` runs the API, which starts this child, restarts it if it
dies, and stops it on shutdown. The Redis lease is unchanged and still names the replica by the
API process's pid. The child exits by itself when its parent is gone.

    python -m pylon_services.scheduler.leader_proc   (started by LeaderProcess, not by hand)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time

from pylon_services.runtime.loop import run as run_loop
from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.config import SchedulerConfig

log = logging.getLogger("pylon.scheduler")
ARGS_ENV = "PYLON_SCHED_LEADER_ARGS"
SUPERVISE_S = 1.0
RESTART_BACKOFF_S = 2.0
STOP_WAIT_S = 10.0
READY_WAIT_S = 120.0


class LeaderProcess:
    """Start, supervise (restart when it dies) and stop the leader child of one API process."""

    def __init__(self, settings: Settings, cfg: SchedulerConfig) -> None:
        self.settings, self.cfg = settings, cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ray_address = settings.ray_address

    def spawn(self, ray_address: str) -> int:
        """Start the child (``ray_address``: the cluster to join); returns the read end of a pipe
        on which it reports that it made its first bid for the lease (see ``wait_ready``)."""
        self._ray_address = ray_address
        return self._spawn()

    async def wait_ready(self, fd: int) -> None:
        """Wait until the child has connected and bid for the lease (as an inline leader does
        before the API serves: callers may expect a leader once the API answers), then supervise."""
        ready = await asyncio.to_thread(_read_ready, fd, READY_WAIT_S)
        if not ready:
            log.warning("scheduler leader process not ready after %.0fs; serving anyway", READY_WAIT_S)
        self._task = asyncio.create_task(self._supervise())

    def _spawn(self) -> int:
        args = {"settings": self.settings.model_dump(mode="json", exclude={"admin_key"})
                | {"ray_address": self._ray_address},
                "sched": self.cfg.model_dump(mode="json"), "parent": os.getpid()}
        read_fd, write_fd = os.pipe()
        env = {**os.environ, ARGS_ENV: json.dumps(args | {"ready_fd": write_fd})}
        self.proc = subprocess.Popen([sys.executable, "-m", "pylon_services.scheduler.leader_proc"], env=env,
                                     pass_fds=(write_fd,))
        os.close(write_fd)
        log.info("started scheduler leader process %d", self.proc.pid)
        return read_fd

    async def _supervise(self) -> None:
        """Restart a child that died. One that exited cleanly was told to stop (a SIGTERM to the
        whole process group, as ``pylon down`` sends): that is the replica shutting down."""
        while True:
            await asyncio.sleep(SUPERVISE_S)
            if self.proc is not None and self.proc.poll() == 0:
                log.info("scheduler leader process %d stopped; not restarting it", self.proc.pid)
                return
            if self.proc is not None and self.proc.poll() is not None:
                log.error("scheduler leader process exited with %s; restarting", self.proc.returncode)
                await asyncio.sleep(RESTART_BACKOFF_S)
                await asyncio.to_thread(_read_ready, self._spawn(), READY_WAIT_S)

    async def stop(self) -> None:
        """SIGTERM the child (it gives the lease back) and wait for it; SIGKILL if it hangs."""
        if self._task:
            self._task.cancel()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


def _read_ready(fd: int, timeout: float) -> bool:
    """True once the child wrote its ready byte; False on timeout or when it died first."""
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable) and os.read(fd, 1) == b"1"
    finally:
        os.close(fd)


async def _run(settings: Settings, cfg: SchedulerConfig, parent: int, ready_fd: int) -> None:
    """Connect to Redis and Ray, run the controller until SIGTERM or the parent is gone."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    from pylon_services.scheduler.controller import Controller
    from pylon_services.scheduler.store.ray_exec import RayExecutor
    from pylon_services.scheduler.store.redis_jobs import JobStore
    from pylon_services.scheduler.store.redis_sched import SchedState

    redis = aioredis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 8),
                              retry_on_error=[RedisConnectionError])
    executor = RayExecutor(settings.ray_address, settings.model_dump(exclude={"admin_key"}),
                           settings.ray_node_ip_address, cfg.instance)
    await asyncio.to_thread(executor.connect)
    controller = Controller(JobStore(redis, track_changes=True), SchedState(redis), executor, redis, cfg,
                            replica_pid=parent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    controller.start()
    try:
        await controller.first_bid.wait()
        try:
            os.write(ready_fd, b"1")
        except OSError:
            pass  # the parent stopped listening (it waits a bounded time); nothing to report to
        os.close(ready_fd)
        while not stop.is_set() and os.getppid() == parent:
            try:
                await asyncio.wait_for(stop.wait(), SUPERVISE_S)
            except TimeoutError:
                pass
    finally:
        await controller.stop()  # gives the lease back at once instead of letting it expire
        await redis.aclose()


def main() -> None:
    from pylon_services.runtime.jsonlog import setup_logging

    args = json.loads(os.environ.pop(ARGS_ENV))
    settings = Settings(**args["settings"])
    cfg = SchedulerConfig(**args["sched"])
    setup_logging("scheduler-leader", settings.log_level)
    started = time.monotonic()
    run_loop(_run(settings, cfg, int(args["parent"]), int(args["ready_fd"])))
    log.info("scheduler leader process stopped after %.0fs", time.monotonic() - started)


if __name__ == "__main__":
    main()
