"""Two `pylon up --random-ports` platforms on one host, each with its own Pylon home, both serve
and share no port, Ray's included. With Ray's defaults every head's client server binds 10001
(SO_REUSEPORT: a client reaches either cluster) and the second head's dashboard agent (52365) and
metrics servers (44217, 44227) fail to bind, which their logs say."""

from __future__ import annotations

import glob
import os
import time

import psutil
import pytest

from pylon.health import check_health
from pylon_services.up import Platform

pytestmark = pytest.mark.e2e


def _listening_ports(pids: list[int]) -> set[int]:
    """TCP ports the processes (and their descendants) listen on."""
    ports: set[int] = set()
    for pid in pids:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                ports |= {c.laddr.port for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                pass
    return ports


def _bind_failures(ray_temp_dir: str) -> list[str]:
    """Ray logs of the platform's sessions that report a port someone else held."""
    hits = []
    for path in glob.glob(os.path.join(ray_temp_dir, "session_*", "logs", "*")):
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                if "address already in use" in f.read().lower():
                    hits.append(path)
    return hits


def test_two_platforms_with_random_ports_serve_side_by_side(tmp_path):
    platforms = [Platform(home=str(tmp_path / name), fixed_ports=False, num_cpus=1, on_step=lambda _: None)
                 for name in ("a", "b")]
    try:
        states = [p.start() for p in platforms]
        time.sleep(5)  # the dashboard agent gives up binding after ~3 s of retries
        for p, state in zip(platforms, states, strict=True):
            assert {n: proc.poll() for n, proc in p.procs.items()} == dict.fromkeys(p.procs)
            assert all(check_health(a) == "SERVING" for a in state["addresses"].values())
            assert p.ray is not None and not _bind_failures(p.ray.temp_dir)
        a, b = (_listening_ports([proc.pid for proc in p.procs.values()]) for p in platforms)
        assert a and b and not a & b
        for ports, state in ((a, states[0]), (b, states[1])):
            unbound = {k: v for k, v in state["ray_ports"].items() if v not in ports}
            assert set(unbound) <= {"dashboard-port"}, unbound  # the dashboard is not started
    finally:
        for p in platforms:
            p.stop()
