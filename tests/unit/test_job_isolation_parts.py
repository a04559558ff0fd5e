"""The pieces that keep user code away from the platform's credentials: the environment it gets,
the user it runs as, and the data endpoint scoped to its job (a real HTTP server over the local
object store)."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pylon.data.sources import JobDataSource
from pylon_services.scheduler.worker import isolation
from pylon_services.scheduler.worker.dataproxy import DataProxy, Scope
from pylon_services.storage.local import LocalObjectStore

INHERITED = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "0", "PYLON_REDIS_URL": "redis://:pw@h/0",
             "PYLON_ADMIN_KEY": "pyl_admin_x", "PYLON_S3_SECRET_KEY": "s", "RAY_AUTH_TOKEN": "t",
             "AWS_SECRET_ACCESS_KEY": "a", "HF_TOKEN": "h", "RAY_ADDRESS": "x:1"}


def test_user_code_inherits_only_the_allowed_environment():
    env = isolation.user_environment(INHERITED, {"MY_FLAG": "1", "PYLON_JOB": "spoofed"}, {"PYLON_JOB": "real"})
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "0", "MY_FLAG": "1",
                   "PYLON_JOB": "real"}


def test_each_job_has_its_own_stable_uid_in_the_range():
    a, b = isolation.job_uid("acme/j1", 1_000_000), isolation.job_uid("acme/j2", 1_000_000)
    assert a != b and a == isolation.job_uid("acme/j1", 1_000_000)
    assert 1_000_000 <= min(a, b) and max(a, b) < 1_000_000 + isolation.JOB_UID_SPAN


def test_modes():
    assert isolation.decide("same", 1_000_000, "acme/j1") == isolation.RunAs(None, "PYLON_JOB_USER=same")
    with pytest.raises(isolation.IsolationError, match="must be one of"):
        isolation.decide("sometimes", 1_000_000, "acme/j1")
    if os.geteuid() != 0:
        assert not isolation.decide("auto", 1_000_000, "acme/j1").isolated
        with pytest.raises(isolation.IsolationError, match="cannot switch users"):
            isolation.decide("isolated", 1_000_000, "acme/j1")
    else:
        assert isolation.decide("isolated", 1_000_000, "acme/j1").uid == isolation.job_uid("acme/j1", 1_000_000)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_demote_runs_a_process_as_the_jobs_user_who_cannot_read_root_files(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("platform key")
    secret.chmod(0o600)
    uid = isolation.job_uid("acme/j1", 1_000_000)
    out = subprocess.run(["/bin/sh", "-c", f"id -u; id -G; cat {secret} || echo DENIED"], capture_output=True,
                         text=True, preexec_fn=isolation.demote(uid), cwd="/")
    assert out.stdout.split() == [str(uid), str(uid), "DENIED"]


@pytest.fixture
def proxy(tmp_path: Path):
    store = LocalObjectStore(str(tmp_path / "objects"))
    store.put("tenants/acme/jobs/j1/checkpoint/step", b"7")
    store.put("tenants/acme/datasets/d/tokenized/0000000001/tok/shard-0.bin", b"0123456789")
    store.put("tenants/acme/datasets/d/versions/0000000001.json", b"{}")
    store.put("tenants/globex/jobs/j9/output/model.bin", b"globex's")
    scope = Scope(["tenants/acme/jobs/j1/", "tenants/acme/datasets/d/tokenized/0000000001/"],
                  ["tenants/acme/datasets/d/versions/0000000001.json"],
                  ["tenants/acme/jobs/j1/output/", "tenants/acme/jobs/j1/checkpoint/"])
    p = DataProxy(store, scope)
    url, token = p.start()
    yield store, url, token
    p.stop()


def test_the_data_endpoint_reads_and_writes_the_jobs_scope_only(proxy):
    store, url, token = proxy
    src = JobDataSource(url, token)
    shard = "tenants/acme/datasets/d/tokenized/0000000001/tok/shard-0.bin"
    assert src.get(shard) == b"0123456789" and src.get(shard, start=2, end=5) == b"234"
    assert src.get("tenants/acme/datasets/d/versions/0000000001.json") == b"{}"
    assert src.list("tenants/acme/jobs/j1/") == ["tenants/acme/jobs/j1/checkpoint/step"]
    src.put("tenants/acme/jobs/j1/output/model.bin", b"weights")
    assert store.get("tenants/acme/jobs/j1/output/model.bin") == b"weights"
    for forbidden in (lambda: src.get("tenants/globex/jobs/j9/output/model.bin"),
                      lambda: src.get("tenants/acme/datasets/d/versions/0000000002.json"),
                      lambda: src.list("tenants/"),
                      lambda: src.put("tenants/acme/datasets/d/versions/0000000001.json", b"x"),
                      lambda: src.put("tenants/acme/jobs/j1/other/x", b"x")):
        with pytest.raises(PermissionError):
            forbidden()
    with pytest.raises(FileNotFoundError):
        src.get("tenants/acme/jobs/j1/missing")
    with pytest.raises(PermissionError):  # another token (another job's) gets nothing
        JobDataSource(url, "not-the-token").get(shard)
    for bad in ("tenants/acme/jobs/j1/../../globex/jobs/j9/output/model.bin", "tenants/acme/jobs/j1/a\x00b"):
        with pytest.raises(OSError):
            src.get(bad)
    req = urllib.request.Request(url + "/v1/objects/" + shard, headers={"Authorization": f"Bearer {token}",
                                                                         "Range": "bytes=50-60"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 416
