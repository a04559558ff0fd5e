"""Joining Ray as a service does (runtime/ray_connect.py), against a real ``ray start --head``:
a driver started before its head joins once the head is up, and one that finds no node of its
own keeps retrying, then gives up at its deadline with Ray's reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylon_services.localstack.ray_head import RAY_AUTH_VARS, RayHead

PROBE = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
         "from pylon_services.runtime import ray_connect; "
         "ray_connect.connect(sys.argv[1], 'connect-test', sys.argv[2], float(sys.argv[3])); "
         "import ray; print('CONNECTED', int(ray.cluster_resources()['CPU']), flush=True)")


def _head(tmp: Path) -> Iterator[RayHead]:
    token = tmp / "token"
    token.write_text(os.urandom(16).hex())
    temp_dir = tempfile.mkdtemp(prefix="pylon-ray-", dir="/tmp")  # short: Ray's unix sockets live there
    head = RayHead(temp_dir, num_cpus=1, auth_token_path=str(token))
    yield head
    head.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def head(tmp_path: Path) -> Iterator[RayHead]:
    """A head not started yet."""
    yield from _head(tmp_path)


@pytest.fixture(scope="module")
def running_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    for head in _head(tmp_path_factory.mktemp("head")):
        yield head.start()


def _probe(head: RayHead, node_ip: str, timeout_s: float, **env: str) -> subprocess.Popen[str]:
    own = {k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARS}  # the head's token file, not ours
    return subprocess.Popen([sys.executable, "-c", PROBE, head.address, node_ip, str(timeout_s)],
                            env={**own, **head.driver_env(), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_driver_started_before_its_head_joins_once_the_head_is_up(head: RayHead) -> None:
    probe = _probe(head, "127.0.0.1", 120)
    try:
        time.sleep(3)  # the driver starts looking for a head nothing serves yet
        assert probe.poll() is None
        head.start()
        out, err = probe.communicate(timeout=150)
        assert probe.returncode == 0, err[-3000:]
        assert "CONNECTED 1" in out
    finally:
        probe.kill()


def test_a_driver_with_no_node_of_its_own_retries_then_gives_up_with_the_reason(running_head: RayHead) -> None:
    head = running_head
    # No raylet runs on 127.0.0.2: each try fails after Ray's node lookup times out (2 s here).
    probe = _probe(head, "127.0.0.2", 8, RAY_gcs_server_request_timeout_seconds="2")
    out, err = probe.communicate(timeout=150)
    assert probe.returncode != 0 and "CONNECTED" not in out
    assert "retrying in" in err
    assert f"could not join the Ray cluster at {head.address} in 8 s" in err
    assert "No node info found matching attributes: '127.0.0.2'" in err


def test_a_driver_with_the_wrong_token_fails_at_once(running_head: RayHead, tmp_path: Path) -> None:
    head = running_head
    wrong = tmp_path / "wrong"
    wrong.write_text(os.urandom(16).hex())
    started = time.monotonic()
    probe = _probe(head, "127.0.0.1", 120, RAY_AUTH_TOKEN_PATH=str(wrong))
    out, err = probe.communicate(timeout=150)
    assert probe.returncode != 0 and "CONNECTED" not in out
    assert "InvalidAuthToken" in err and "retrying in" not in err
    assert time.monotonic() - started < 60  # not the 120 s deadline
