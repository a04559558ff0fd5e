"""What a process on the same host finds behind the platform's own ports when it lacks the
platform's credentials: the local SeaweedFS answers only authenticated S3 (its filer and volume
HTTP APIs want JWTs, its gRPC ports mutual TLS), Redis wants its password, and Ray's GCS and the
dashboard agent's job API want the cluster's token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
import redis

from tests.conftest import TEST_BUCKET, s3_connection

pytestmark = pytest.mark.integration


def _http(url: str, data: bytes | None = None, method: str | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_seaweedfs_serves_only_authenticated_s3(seaweed: Any) -> None:
    from pylon_services.storage.s3 import S3ObjectStore

    store = S3ObjectStore(TEST_BUCKET, prefix="internals", **s3_connection(seaweed))
    store.put("tenant-a/secret.txt", b"tenant data")
    assert store.get("tenant-a/secret.txt") == b"tenant data"  # S3 with the keys works
    ports = seaweed.internal_ports
    filer = f"http://127.0.0.1:{ports['filer']}/buckets/{TEST_BUCKET}/internals/tenant-a"
    assert _http(filer + "/") == 401  # listing
    assert _http(filer + "/secret.txt") == 401  # reading
    assert _http(filer + "/evil.txt", b"x", "PUT") == 401  # writing
    assign = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports['master']}/dir/assign", timeout=5).read())
    assert _http(f"http://{assign['url']}/{assign['fid']}", b"x", "PUT") == 401  # an id alone writes nothing
    for name in ("filer.grpc", "volume.grpc", "master.grpc"):
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[name]}")
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=2)  # no plaintext gRPC
        channel.close()


def test_redis_refuses_a_client_without_the_password(redis_server: Any) -> None:
    assert redis.Redis.from_url(redis_server.url).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=redis_server.host, port=redis_server.port).get("pylon:apikey:x")


def test_ray_refuses_clients_and_job_submissions_without_the_token(ray_cluster: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    probe = f"import ray; ray.init(address={ray_cluster.address!r}); print('CONNECTED')"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert "CONNECTED" not in out.stdout and "AuthenticationError" in out.stderr
    body = json.dumps({"entrypoint": "true", "submission_id": "pylon-internals-probe"}).encode()
    for port in ray_agent_ports(ray_cluster.address):  # every node runs an agent with the job API
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/job_agent/jobs/", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=5)
        assert e.value.code == 401


def ray_agent_ports(address: str) -> list[int]:
    """The dashboard agents' HTTP ports of the cluster's nodes (asked as an authenticated driver)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="internals-test", log_to_driver=False)
    return [int(n["DashboardAgentListenPort"]) for n in ray.nodes() if n.get("Alive")]
