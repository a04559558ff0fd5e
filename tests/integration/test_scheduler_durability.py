"""Durability of the scheduler, run as a real subprocess against its own Redis (AOF on) and the
session's Ray cluster: SIGKILL it with jobs queued and running and every job still finishes
exactly once (running attempts are adopted, not rerun); SIGKILL Redis right after submissions
were acknowledged and none is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pylon_services.localstack.procs import free_port
from pylon_services.localstack.redis_server import RedisServer
from tests.support.platform import ADMIN_KEY

pytestmark = pytest.mark.integration
INSTANCE = "pylondur"

# Appends one line per run to a file named after the job, then works for a few seconds.
WORK = """
import os, sys, time
path = os.path.join(sys.argv[1], os.environ["PYLON_JOB"].rsplit("/", 1)[1])
with open(path, "a") as f:
    f.write("ran\\n")
time.sleep(float(sys.argv[2]))
"""


class SchedulerProc:
    """``python -m pylon_services.scheduler`` with its own Redis; restartable on the same port."""

    def __init__(self, tmp: str, ray_address: str) -> None:
        self.tmp = tmp
        self.redis = RedisServer(os.path.join(tmp, "redis")).start()
        self.port = free_port()
        self.env = {**os.environ, "PYLON_REDIS_URL": self.redis.url, "PYLON_RAY_ADDRESS": ray_address,
                    "PYLON_RAY_NODE_IP_ADDRESS": "127.0.0.1", "PYLON_PORT": str(self.port),
                    "PYLON_METRICS_PORT": "-1", "PYLON_ADMIN_KEY": ADMIN_KEY,
                    "PYLON_OBJECT_STORE_URL": f"file://{tmp}/objects", "PYLON_SCHED_INSTANCE": INSTANCE,
                    "PYLON_SCHED_LEASE_S": "3", "PYLON_SHUTDOWN_GRACE_S": "1"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.others: list[subprocess.Popen[bytes]] = []
        self.runs = 0

    def start(self, port: int | None = None) -> subprocess.Popen[bytes]:
        """Start a replica (on the shared port unless ``port`` is given); returns its process."""
        self.runs += 1
        log = open(os.path.join(self.tmp, f"scheduler-{self.runs}.log"), "wb")
        env = {**self.env, "PYLON_PORT": str(port or self.port)}
        proc = subprocess.Popen([sys.executable, "-m", "pylon_services.scheduler"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if port is None:
            self.proc = proc
        else:
            self.others.append(proc)
        return proc

    def client(self, port: int | None = None) -> Any:
        import pylon

        c = pylon.Client(f"127.0.0.1:{port or self.port}", ADMIN_KEY)
        deadline = time.time() + 60
        while True:
            try:
                c.jobs.cluster()
                return c
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        for proc in [self.proc, *self.others]:
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.redis.stop()


@pytest.fixture
def sched(tmp_path: Any, ray_cluster: Any) -> Iterator[SchedulerProc]:
    s = SchedulerProc(str(tmp_path), ray_cluster.address)
    s.start()
    yield s
    s.stop()


def _wait_all_done(c: Any, names: list[str], timeout: float) -> list[Any]:
    deadline = time.time() + timeout
    while True:
        jobs = [c.jobs.get(n) for n in names]
        if all(j.done for j in jobs) or time.time() > deadline:
            return jobs
        time.sleep(0.5)


def _our_placement_groups(ray_address: str) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, namespace="pylon-test", log_to_driver=False)
    return [pg for pg in ray.util.placement_group_table().values()
            if pg.get("name", "").startswith(f"{INSTANCE}-") and pg.get("state") != "REMOVED"]


def test_sigkilled_scheduler_restarts_and_every_job_finishes_exactly_once(sched, tmp_path, ray_cluster):
    marks = tmp_path / "marks"
    marks.mkdir()
    c = sched.client()
    spec = {"resources": {"cpus": 2}, "command": {"argv": [sys.executable, "-c", WORK, str(marks), "6"]}}
    names = [c.jobs.submit(spec).name for _ in range(7)]
    deadline = time.time() + 90
    while sum(c.jobs.get(n).state == "running" for n in names) < 3:
        assert time.time() < deadline, "jobs did not start"
        time.sleep(0.3)
    before = {n: c.jobs.get(n) for n in names}
    sched.kill()
    sched.start()
    c = sched.client()
    jobs = _wait_all_done(c, names, 240)
    assert [j.state for j in jobs] == ["succeeded"] * 7, [(j.name, j.state, j.message) for j in jobs]
    for j in jobs:
        assert (marks / j.name.rsplit("/", 1)[1]).read_text() == "ran\n", j.name  # ran exactly once
        if before[j.name].state == "running":
            assert j.attempt == 1, f"{j.name} was running at the kill and must be adopted, not rerun"
    assert _our_placement_groups(ray_cluster.address) == []  # no orphans


def test_redis_sigkilled_after_acknowledged_submits_loses_none(sched):
    c = sched.client()
    names = [c.jobs.submit({"command": {"argv": ["true"]}}, request_id=f"aof-{i}").name for i in range(20)]
    # Every submit above was acknowledged; Redis wrote it to the AOF before replying.
    os.kill(sched.redis.proc.pid, signal.SIGKILL)
    sched.redis.proc.wait()
    sched.redis.start()
    deadline = time.time() + 30
    while True:
        try:
            found = [c.jobs.get(n).name for n in names]
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    assert found == names
    jobs = _wait_all_done(c, names, 180)
    assert [j.state for j in jobs] == ["succeeded"] * 20, [(j.name, j.state, j.message) for j in jobs]
    # The same request ids still map to the same jobs after the restart.
    assert c.jobs.submit({"command": {"argv": ["true"]}}, request_id="aof-3").name == names[3]


def test_two_replicas_one_leader_and_the_other_takes_over(sched):
    import redis

    second_port = free_port()
    second = sched.start(second_port)
    a, b = sched.client(), sched.client(second_port)
    # Discovery names the replica that was asked for its own service, not the last to register.
    assert a.endpoints()["scheduler"].endswith(f":{sched.port}") and b.endpoints()["scheduler"].endswith(f":{second_port}")
    r = redis.Redis.from_url(sched.redis.url)
    holder = r.get("pylon:scheduler:leader").decode()
    pids = {sched.proc.pid: sched.proc, second.pid: second}
    leader = pids[int(holder.split("-")[0])]
    # Either replica accepts submits; only the leader runs them.
    jobs = [a.jobs.submit({"command": {"argv": ["true"]}}).name, b.jobs.submit({"command": {"argv": ["true"]}}).name]
    done = [a.jobs.wait(n, timeout=120) for n in jobs]
    assert [j.state for j in done] == ["succeeded", "succeeded"], [(j.name, j.state, j.message) for j in done]
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    survivor = b if leader is sched.proc else a
    job = survivor.jobs.submit({"command": {"argv": ["true"]}})
    assert survivor.jobs.wait(job.name, timeout=120).state == "succeeded"
    assert r.get("pylon:scheduler:leader").decode() != holder
