"""The per-node launcher actor on a real Ray cluster: stopping an attempt lets tasks that are
ending end by themselves and kills only what still runs after the grace period. Ray hands a
finished task's worker process to the next task; a force-cancel in the moment a task was
returning killed that process and, with it, another job's worker (CI saw a job of the
SIGKILL-restart test fail with "worker process lost" this way)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from pylon_services.scheduler.worker.launcher import Launcher
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_stop_lets_an_ending_task_end_and_kills_one_that_keeps_running(ray_cluster, tmp_path):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    def _pid_then_sleep(job: dict[str, Any], settings: dict[str, Any], attempt: int, rank: int) -> int:
        """Defined here so Ray ships it by value (this test module is not importable on workers)."""
        import os
        import time

        base = os.path.join(job["dir"], job["name"])
        with open(base + ".pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(job["sleep"])
        open(base + ".returned", "w").close()
        return 0

    if not ray.is_initialized():
        ray.init(address=ray_cluster.address, namespace="launcher-test", log_to_driver=False)
    launcher = ray.remote(Launcher).options(num_cpus=0).remote(_pid_then_sleep)
    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready(), timeout=60)
    opts = {"num_cpus": 1}
    try:
        def launch(name: str, sleep: float) -> None:
            job = {"name": name, "dir": str(tmp_path), "sleep": sleep, "attempt": 1}
            assert ray.get(launcher.launch.remote(name, job, {}, [(0, pg, 0, opts)])) == 1
            wait_for((tmp_path / f"{name}.pid").exists, 60, f"task {name} to run")

        # As when a job's workers reported their result: the scheduler releases the attempt
        # while its task is still on its way out (here: 0.8 s of it left).
        launch("ending", 0.8)
        ray.get(launcher.stop.remote("ending"))
        assert (tmp_path / "ending.returned").exists(), "stop killed a task that was ending by itself"
        # A task that does not end within the grace period is killed (a hung worker, a cancel).
        launch("hung", 60.0)
        started = time.monotonic()
        ray.get(launcher.stop.remote("hung", 1.0))
        assert time.monotonic() - started < 10
        pid = int((tmp_path / "hung.pid").read_text())
        wait_for(lambda: not _running(pid), 30, "the hung task's process to be killed")
        assert not (tmp_path / "hung.returned").exists()
        assert ray.get(launcher.names.remote()) == []
    finally:
        ray.kill(launcher)
        remove_placement_group(pg)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
