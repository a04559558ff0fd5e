"""Session fixtures for real Redis, a real Ray cluster (fake GPU nodes of several accelerator
types) and the in-process platform. Loaded from tests/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from pylon_services.localstack.redis_server import RedisServer
from tests.support.platform import ADMIN_KEY, InProcessPlatform


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(str(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A real multi-node Ray cluster on this machine: a CPU head plus fake GPU nodes of three
    accelerator types (Ray schedules them exactly like real ones)."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False,
                                                           "node_ip_address": "127.0.0.1"})
    for gpu_type, gpus in (("V100", 2), ("P100", 2), ("K80", 4)):
        cluster.add_node(num_cpus=2, num_gpus=gpus, resources={f"accelerator_type:{gpu_type}": gpus},
                         node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    import ray

    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def platform(redis_server: RedisServer, ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[InProcessPlatform]:
    objects = tmp_path_factory.mktemp("objects")
    # An A100 pool Kubernetes could grow to 2 nodes of 8 GPUs, with none running (scale from zero).
    os.environ.setdefault("PYLON_SCHED_POOLS", '{"A100": {"min_nodes": 0, "max_nodes": 2, "gpus_per_node": 8, '
                                               '"cpus_per_node": 16}}')
    p = InProcessPlatform(redis_server.url, f"file://{objects}", ray_cluster.address).start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def admin_client(platform: InProcessPlatform) -> Iterator[Any]:
    import pylon

    with pylon.Client(platform.addresses["gateway"], ADMIN_KEY) as c:
        yield c


@pytest.fixture(scope="session")
def tenant_clients(admin_client: Any, platform: InProcessPlatform) -> Iterator[dict[str, Any]]:
    """Editor clients of two tenants, 'acme' and 'globex', plus a viewer of 'acme'."""
    import pylon

    out = {}
    for label, tenant, role in (("acme", "acme", "editor"), ("globex", "globex", "editor"), ("viewer", "acme", "viewer")):
        _, token = admin_client.admin.create_key(tenant, role)
        out[label] = pylon.Client(platform.addresses["gateway"], token)
    yield out
    for c in out.values():
        c.close()
