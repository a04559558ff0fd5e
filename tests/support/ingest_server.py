"""An ingest service alone on real SeaweedFS (S3, so presigned multipart works), real Redis and
the session's real Ray cluster, in-process or as a subprocess one can SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from pylon_services.localstack.procs import free_port, wait_until
from pylon_services.runtime.auth import ApiKeyStore
from pylon_services.runtime.server import PylonServer
from pylon_services.runtime.settings import Settings
from pylon_services.storage.s3 import S3ObjectStore
from tests.support.platform import ADMIN_KEY, LoopThread


@dataclass
class IngestUnderTest:
    settings: Settings
    lt: LoopThread
    server: PylonServer | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    def store(self) -> S3ObjectStore:
        s = self.settings
        bucket, _, prefix = s.object_store_url[5:].partition("/")
        return S3ObjectStore(bucket, prefix=prefix, endpoint_url=s.s3_endpoint_url, access_key=s.s3_access_key,
                             secret_key=s.s3_secret_key)

    def client(self, who: str = "acme") -> Any:
        import pylon

        return pylon.Client(self.address, self.tokens[who])

    def env(self) -> dict[str, str]:
        """Environment for running this ingest as a subprocess (``python -m pylon_services.ingest``)."""
        env = {**os.environ, **{f"PYLON_{k.upper()}": str(v) for k, v in self.settings.model_dump().items()}}
        return env


def ingest_settings(redis_url: str, seaweed: Any, ray_address: str, bucket: str, db: int) -> Settings:
    return Settings(redis_url=redis_url.rsplit("/", 1)[0] + f"/{db}",
                    object_store_url=f"s3://{bucket}/ingest-{uuid.uuid4().hex[:8]}",
                    s3_endpoint_url=seaweed.endpoint_url, s3_access_key=seaweed.access_key,
                    s3_secret_key=seaweed.secret_key, ray_address=ray_address, ray_node_ip_address="127.0.0.1",
                    admin_key=ADMIN_KEY, metrics_port=-1, port=free_port(), shutdown_grace_s=2.0)


def start_in_process(settings: Settings) -> IngestUnderTest:
    from pylon_services.ingest.server import build

    lt = LoopThread()
    it = IngestUnderTest(settings, lt)

    async def start() -> None:
        redis = aioredis.from_url(settings.redis_url)
        it.server = PylonServer(settings, redis, await build(settings, redis))
        await it.server.start()
        keys = ApiKeyStore(redis)
        for label, tenant, role in (("acme", "acme", "editor"), ("globex", "globex", "editor"),
                                    ("viewer", "acme", "viewer")):
            _, it.tokens[label] = await keys.create(tenant, role)

    lt.run(start())
    return it


def stop_in_process(it: IngestUnderTest) -> None:
    if it.server:
        it.lt.run(it.server.stop(grace=1.0))
    it.lt.close()


def start_subprocess(it: IngestUnderTest, log_path: str, **env: str) -> subprocess.Popen[bytes]:
    """The same ingest as a separate process (same Redis, store, port), for kill -9 tests."""
    from pylon.health import check_health

    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pylon_services.ingest"], env={**it.env(), **env},
                                stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: check_health(it.address) == "SERVING", 60, "ingest subprocess", proc)
    return proc


def ingest_fixtures(db: int) -> tuple[Any, Any]:
    """The ``ingest`` (one in-process service per test module, on Redis database ``db``) and
    ``acme`` (a client of tenant acme with its own local cache) fixtures of an ingest test module:
    ``ingest, acme = ingest_fixtures(db=7)``."""
    from tests.conftest import TEST_BUCKET

    @pytest.fixture(scope="module")
    def ingest(redis_server: Any, ray_cluster: Any, seaweed: Any) -> Any:
        it = start_in_process(ingest_settings(redis_server.url, seaweed, ray_cluster.address, TEST_BUCKET, db=db))
        yield it
        stop_in_process(it)

    @pytest.fixture
    def acme(ingest: IngestUnderTest, tmp_path: Any, monkeypatch: Any) -> Any:
        monkeypatch.setenv("PYLON_CACHE_DIR", str(tmp_path / "cache"))
        with ingest.client("acme") as c:
            yield c

    return ingest, acme
