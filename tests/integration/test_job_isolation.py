"""A job's user code, run by the real scheduler on the real Ray cluster as an isolated user
(``PYLON_JOB_USER=isolated``), tries what the security review did: read the platform's secrets
from its environment, from ``/proc`` of the platform's processes and from Redis's files, talk to
Redis, the object store's filer and Ray's job API without their credentials. Every attempt fails;
its own data endpoint works, for its own prefixes only. Engine replicas refuse calls without the
platform's internal key. The probe is a bash script: on this machine the only Python lives under
a 0700 home, which an unprivileged user cannot run (``isolation.python_runs_unprivileged``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from pylon_services.localstack.procs import free_port
from tests.conftest import TEST_BUCKET
from tests.support.scheduler_procs import SchedulerProc

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="isolating user code needs a root worker")]

PROBE = r"""
say() { echo "PROBE $1 $2"; }
say uid "$(id -u)"
secrets='^(PYLON_(ADMIN_KEY|REDIS_URL|S3_|INTERNAL_KEY|OBJECT_STORE)|RAY_AUTH|AWS_)'
env | grep -E "$secrets" > /dev/null && say env LEAK || say env clean
cat /proc/$LEADER_PID/environ > /dev/null 2>&1 && say leader-environ READ || say leader-environ denied
cat /proc/$PPID/environ > /dev/null 2>&1 && say worker-environ READ || say worker-environ denied
ls "$REDIS_DIR" > /dev/null 2>&1 && say redis-dir READ || say redis-dir denied
http() {  # method port path [header]: prints the status line's code
  exec 3<>"/dev/tcp/127.0.0.1/$2" || { echo none; return; }
  extra=""; [ -n "$4" ] && extra="$4"$'\r\n'
  printf '%s %s HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n%s\r\n' "$1" "$3" "$extra" >&3
  head -n 1 <&3 | cut -d' ' -f2; exec 3<&-
}
exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" && { printf 'GET pylon:apikey:x\r\n' >&3; say redis "$(head -c 7 <&3)"; exec 3<&-; }
say filer "$(http GET "$FILER_PORT" "/buckets/$BUCKET/")"
say ray-jobs "$(http POST "$AGENT_PORT" /api/job_agent/jobs/)"
DATA_PORT=${PYLON_DATA_URL##*:}
say data-own "$(http GET "$DATA_PORT" "/v1/list?prefix=$PYLON_JOB/" "Authorization: Bearer $PYLON_DATA_TOKEN")"
say data-other "$(http GET "$DATA_PORT" "/v1/list?prefix=tenants/" "Authorization: Bearer $PYLON_DATA_TOKEN")"
say data-notoken "$(http GET "$DATA_PORT" "/v1/list?prefix=$PYLON_JOB/")"
"""


@pytest.fixture
def isolated(tmp_path: Any, ray_cluster: Any, seaweed: Any) -> Iterator[SchedulerProc]:
    s = SchedulerProc(str(tmp_path), ray_cluster.address, PYLON_JOB_USER="isolated",
                      PYLON_OBJECT_STORE_URL=f"s3://{TEST_BUCKET}/isolation", PYLON_S3_ENDPOINT_URL=seaweed.endpoint_url,
                      PYLON_S3_ACCESS_KEY=seaweed.access_key, PYLON_S3_SECRET_KEY=seaweed.secret_key,
                      PYLON_SCHED_INSTANCE="pylonisol", PYLON_PORT=str(free_port()))
    s.start()
    yield s
    s.stop()


def _probe_env(s: SchedulerProc, seaweed: Any, ray_cluster: Any) -> dict[str, str]:
    from tests.integration.test_local_internals import ray_agent_ports

    assert s.leader is not None
    return {"LEADER_PID": str(s.leader.pid), "REDIS_DIR": s.redis.data_dir, "REDIS_PORT": str(s.redis.port),
            "FILER_PORT": str(seaweed.internal_ports["filer"]), "BUCKET": TEST_BUCKET,
            "AGENT_PORT": str(ray_agent_ports(ray_cluster.address)[0])}


def test_isolated_user_code_cannot_reach_the_platforms_secrets_or_internals(isolated, seaweed, ray_cluster):
    c = isolated.client()
    job = c.jobs.submit({"command": {"argv": ["/bin/bash", "-c", PROBE], "env": _probe_env(isolated, seaweed, ray_cluster)}})
    done = c.jobs.wait(job.name, timeout=180)
    lines = list(c.jobs.logs(job.name))
    assert done.state == "succeeded", (done.message, lines)
    found = dict(line.split(" ", 2)[1:] for line in lines if line.startswith("PROBE "))
    assert int(found["uid"]) >= 1_000_000, lines
    assert {k: found[k] for k in ("env", "leader-environ", "worker-environ", "redis-dir")} == {
        "env": "clean", "leader-environ": "denied", "worker-environ": "denied", "redis-dir": "denied"}, lines
    assert found["redis"].startswith("-NOAUTH"), lines
    assert (found["filer"], found["ray-jobs"]) == ("401", "401"), lines
    assert (found["data-own"], found["data-other"], found["data-notoken"]) == ("200", "403", "401"), lines


def test_engine_replicas_refuse_calls_without_the_platforms_internal_key(tenant_clients, tmp_path):
    """A replica's port is reachable from user code on its node; before, it served anyone."""
    import grpc

    from pylon.engine.v1 import engine_pb2, engine_pb2_grpc
    from pylon_services.runtime.settings import Settings
    from tests.integration.test_gateway_deployments import _tiny_llama
    from tests.support.platform import ADMIN_KEY

    acme = tenant_clients["acme"]
    mv = acme.models.register("iso-engine", _tiny_llama(tmp_path / "m"))
    dep = acme.deployments.deploy("iso-engine", f"models:/iso-engine/versions/{mv.version}", timeout=240)
    try:
        address = dep.replica_status[0].address
        request = engine_pb2.GenerateRequest(prompt="hi", sampling=engine_pb2.SamplingParams(max_tokens=2))
        with grpc.insecure_channel(address) as ch:
            stub = engine_pb2_grpc.EngineServiceStub(ch)
            for metadata in ((), (("authorization", f"Bearer {ADMIN_KEY}"),)):  # not even the admin key
                with pytest.raises(grpc.RpcError) as e:
                    list(stub.Generate(request, metadata=metadata, timeout=30))
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            internal = Settings(admin_key=ADMIN_KEY).internal_key
            assert list(stub.Generate(request, metadata=(("authorization", f"Bearer {internal}"),), timeout=60))
        assert acme.generate("iso-engine", "hi", max_tokens=2, seed=0).completion_tokens == 2  # the gateway has it
    finally:
        acme.deployments.delete("iso-engine")


def test_links_planted_in_the_checkpoint_dir_are_not_uploaded(tenant_clients, platform):
    """The worker uploads the checkpoint directory with the platform's credentials: a link user
    code plants there (to a file only the worker may read) must not be followed."""
    from pylon_services.storage.factory import open_store

    acme = tenant_clients["acme"]
    script = ('ln -s /etc/hostname "$PYLON_CHECKPOINT_DIR/leak"; echo ok > "$PYLON_CHECKPOINT_DIR/real"; '
              'ln -s /etc/hostname "$PYLON_CHECKPOINT_SAVED_FILE"; sleep 1')
    job = acme.jobs.submit({"command": {"argv": ["/bin/sh", "-c", script]}})
    assert acme.jobs.wait(job.name, timeout=120).state == "succeeded"
    store = open_store(platform.base["object_store_url"])
    keys = sorted(o.key.split("/checkpoint/", 1)[1] for o in store.iter_all(f"{job.name}/checkpoint/"))
    # Left at exit, unmarked: checkpoint "step 0" of the one rank, with the real file only.
    assert keys == ["step-000000000000/manifest.json", "step-000000000000/rank-0.json",
                    "step-000000000000/rank-0/real"]
    assert not any("uploaded" in line for line in acme.jobs.logs(job.name))  # the planted mark was not read


def test_a_failing_workload_leaves_its_reason_in_the_job_log_but_no_service_traceback(tenant_clients):
    acme = tenant_clients["acme"]
    # A replica of a model version that does not exist fails in the worker (a missing dataset is
    # refused at submit now, so it cannot reach one).
    job = acme.jobs.submit({"engine": {"deployment": "tenants/acme/deployments/nope", "engine": "torch",
                                       "model_version": "tenants/acme/models/nope/versions/1"}})
    done = acme.jobs.wait(job.name, timeout=120)
    text = "\n".join(acme.jobs.logs(job.name))
    assert done.state == "failed" and "not found" in done.message
    assert "pylon: the worker failed: NotFound" in text
    assert "Traceback" not in text and 'File "/' not in text


READER = r"""
import json, sys
from pylon.train import data_store, output_prefix
store = data_store()
name = sys.argv[1]
t, d, n = name.split("/")[1], name.split("/")[3], int(name.split("/")[5])
manifest = json.loads(store.get(f"tenants/{t}/datasets/{d}/versions/{n:010d}.json"))
text = store.get(manifest["processed_files"][0]["object_key"])
store.put(output_prefix() + "lines.txt", str(len(text.splitlines())).encode())
try:
    store.get(f"tenants/{t}/datasets/{d}/versions/{n + 1:010d}.json")
    print("OTHER-READ")
except PermissionError:
    print("OTHER-DENIED")
"""


def test_a_command_reads_its_declared_dataset_and_writes_its_output_through_its_data_endpoint(tenant_clients, platform,
                                                                                              tmp_path):
    import sys

    from pylon_services.storage.factory import open_store

    acme = tenant_clients["acme"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i} of the declared dataset\n" for i in range(12)))
    version = acme.datasets.upload(str(corpus), "iso-data")
    job = acme.jobs.submit({"command": {"argv": [sys.executable, "-c", READER, version.name],
                                        "datasets": [version.name]}})
    done = acme.jobs.wait(job.name, timeout=180)
    lines = list(acme.jobs.logs(job.name))
    assert done.state == "succeeded", (done.message, lines)
    assert "OTHER-DENIED" in lines
    store = open_store(platform.base["object_store_url"])
    assert store.get(f"{job.name}/output/lines.txt") == b"12"
