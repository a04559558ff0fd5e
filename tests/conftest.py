"""Shared test setup: markers, and real servers started once per session (SeaweedFS for S3)."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pylon_services.common.errors import FailedPrecondition
from pylon_services.localstack.seaweed import SeaweedServer, find_weed_binary
from pylon_services.storage.s3 import S3ObjectStore

# One-machine Ray: keep its addresses on loopback (must be set before Ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
# Token authentication, as `pylon up` runs Ray (Ray reads it once, at import): every driver (this
# process, the leader and ingest processes the tests start) and every node inherits the token.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

pytest_plugins = ["tests.support.fixtures"]

TEST_BUCKET = "pylon-test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: talks to real servers started on this machine (SeaweedFS, Redis, Ray)"
    )


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One real SeaweedFS (`weed mini`) on free ports for the whole session; skips if not installed."""
    try:
        find_weed_binary()
    except FailedPrecondition as err:
        pytest.skip(str(err))
    with SeaweedServer(tmp_path_factory.mktemp("seaweed")) as server:
        S3ObjectStore(TEST_BUCKET, **s3_connection(server)).ensure_bucket()
        yield server


def s3_connection(server: SeaweedServer) -> dict[str, Any]:
    """Keyword arguments that point an S3ObjectStore (or open_store) at ``server``."""
    return {"endpoint_url": server.endpoint_url, "access_key": server.access_key, "secret_key": server.secret_key}


@pytest.fixture
def s3_store(seaweed: SeaweedServer) -> S3ObjectStore:
    """An S3 store on the session's SeaweedFS, under a prefix no other test uses."""
    return S3ObjectStore(TEST_BUCKET, prefix=f"t-{uuid.uuid4().hex[:12]}", **s3_connection(seaweed))
