"""The three flows through the real services: data in, a job on Ray, a model registered and
served. Includes the skeleton's failure cases (bad uploads, bad specs, retries, races)."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib

import google_crc32c
import pytest

import pylon
from pylon.ingest.v1 import ingest_pb2

pytestmark = pytest.mark.integration


def _upload_raw(client, name, chunks, digest="", fmt=ingest_pb2.DATA_FORMAT_TEXT, bad_crc_at=-1):
    def messages():
        yield ingest_pb2.UploadDatasetVersionRequest(header=ingest_pb2.UploadHeader(
            dataset=f"tenants/-/datasets/{name}", path="data.txt", format=fmt, digest=digest))
        for i, data in enumerate(chunks):
            crc = google_crc32c.value(data) ^ (1 if i == bad_crc_at else 0)
            yield ingest_pb2.UploadDatasetVersionRequest(chunk=ingest_pb2.UploadChunk(data=data, crc32c=crc))
    return client.call(client.ingest.UploadDatasetVersion, messages())


def test_upload_versions_and_dedup(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\n\nthird line\n")
    v1 = acme.datasets.upload(str(path), "corpus")
    assert (v1.version, v1.record_count, v1.deduplicated) == (1, 3, False)
    assert v1.files[0]["digest"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    v2 = acme.datasets.upload(str(path), "corpus")
    assert (v2.version, v2.deduplicated, v2.digest) == (2, True, v1.digest)
    assert acme.datasets.get("corpus").latest_version == 2
    assert acme.datasets.get("corpus", "latest").version == 2


def test_corrupted_uploads_are_rejected_and_leave_nothing(tenant_clients):
    acme = tenant_clients["acme"]
    data = b"hello world\n" * 100
    with pytest.raises(pylon.InvalidArgumentError, match="header.digest"):
        _upload_raw(acme, "corrupt", [data], digest="sha256:" + "0" * 64)
    with pytest.raises(pylon.InvalidArgumentError, match="crc32c"):
        _upload_raw(acme, "corrupt", [data, data], bad_crc_at=1)
    with pytest.raises(pylon.InvalidArgumentError, match="line 2: malformed_json"):
        _upload_raw(acme, "corrupt", [b'{"a": 1}\n{oops\n'], fmt=ingest_pb2.DATA_FORMAT_JSONL)
    with pytest.raises(pylon.InvalidArgumentError, match="line 1: bad_utf8"):
        _upload_raw(acme, "corrupt", [b"\xff\xfe bad bytes\n"])
    with pytest.raises(pylon.NotFoundError):
        acme.datasets.get("corrupt")


def test_same_request_id_gives_the_same_job(tenant_clients):
    acme = tenant_clients["acme"]
    spec = {"workers": 1, "resources": {"cpus": 1}, "command": {"argv": ["true"]}}
    a = acme.jobs.submit(spec, request_id="same-id-1")
    b = acme.jobs.submit(spec, request_id="same-id-1")
    assert a.name == b.name
    assert acme.jobs.wait(a.name, timeout=120).state == "succeeded"
    with pytest.raises(pylon.FailedPreconditionError, match="already succeeded"):
        acme.jobs.cancel(a.name)


@pytest.mark.parametrize("resources,match", [
    ({"gpus": 1, "gpu_types": ["H100"]}, "unknown GPU type"),
    ({"gpus": 8, "gpu_types": ["V100"]}, "no node can ever hold one worker"),
    ({"gpus": 9}, "no node can ever hold one worker"),  # any type: more than the declared 8-GPU A100 nodes too
])
def test_unsatisfiable_requests_fail_at_submit(tenant_clients, resources, match):
    spec = {"resources": resources, "command": {"argv": ["true"]}}
    with pytest.raises(pylon.FailedPreconditionError, match=match):
        tenant_clients["acme"].jobs.submit(spec)


def test_any_type_request_goes_where_it_fits(tenant_clients):
    acme = tenant_clients["acme"]
    # 3 GPUs per worker fit only the K80 node (4 GPUs): accepted and placed there.
    job = acme.jobs.wait(acme.jobs.submit({"resources": {"gpus": 3}, "command": {"argv": ["true"]}}).name, timeout=120)
    assert (job.state, job.gpu_type) == ("succeeded", "K80")


def test_bad_trainer_config_is_rejected_with_fields(tenant_clients):
    acme = tenant_clients["acme"]
    for config, field in (({"steps": -5}, "steps"), ({"bogus": 1}, "bogus"), ({"lr": "fast"}, "lr")):
        with pytest.raises(pylon.InvalidArgumentError) as e:
            acme.jobs.submit({"trainer": {"trainer": "causal-lm", "config": config}})
        assert f"spec.trainer.config.{field}" in {v.field for v in e.value.violations}


def test_a_trainer_that_does_not_exist_is_refused_naming_the_ones_that_do(tenant_clients):
    acme = tenant_clients["acme"]
    before = len(list(acme.jobs.list(page_size=500)))
    with pytest.raises(pylon.InvalidArgumentError) as e:
        acme.jobs.submit({"trainer": {"trainer": "tiny-gpt", "config": {"steps": 10}}})
    assert [(v.field, v.description) for v in e.value.violations] == [("spec.trainer.trainer", "must be one of causal-lm")]
    assert len(list(acme.jobs.list(page_size=500))) == before  # nothing was stored


def test_crashing_job_is_retried_then_failed_with_exit_code_and_logs(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"max_retries": 1, "command": {
        "argv": ["python", "-c", "import sys; print('about to fail'); sys.exit(3)"]}})
    job = acme.jobs.wait(job.name, timeout=180)
    assert (job.state, job.exit_code, job.attempt) == ("failed", 3, 2)
    assert "about to fail" in job.last_log_lines
    logs = list(acme.jobs.logs(job.name))
    assert sum("attempt" in line and "started" in line for line in logs) == 2


def test_gpu_job_lands_on_the_preferred_pool_with_free_capacity(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"resources": {"gpus": 1, "gpu_types": ["P100", "V100"]},
                            "command": {"argv": ["python", "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"]}})
    job = acme.jobs.wait(job.name, timeout=120)
    assert (job.state, job.gpu_type) == ("succeeded", "P100")


def test_concurrent_registrations_get_distinct_numbers(tenant_clients, platform, admin_client):
    acme = tenant_clients["acme"]
    job = acme.jobs.wait(acme.jobs.submit({"command": {"argv": ["true"]}}).name, timeout=120)
    # Register the job's log file prefix as the artifact: any real object works for numbering.
    source = f"{job.name}/logs"

    def register(i):
        with pylon.Client(platform.addresses["gateway"], acme.token) as c:
            return c.models.register("racey", source_uri=source, request_id=f"race-{i}").version

    with cf.ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(register, range(16)))
    assert versions == list(range(1, 17))
    # a repeated request_id returns the same version, it does not allocate a new one
    assert acme.models.register("racey", source_uri=source, request_id="race-3").version in versions
    assert acme.models.get("racey").latest_version == 16


def test_alias_compare_and_swap(tenant_clients):
    acme = tenant_clients["acme"]
    a1 = acme.models.set_alias("racey", "prod", 1)
    a2 = acme.models.set_alias("racey", "prod", 2, etag=a1.etag)
    with pytest.raises(pylon.AbortedError):
        acme.models.set_alias("racey", "prod", 3, etag=a1.etag)  # stale
    assert acme.models.get_alias("racey", "prod").version == 2
    assert acme.models.resolve("models:/racey@prod").version == 2
    assert acme.models.get_alias("racey", "prod").etag == a2.etag
    with pytest.raises(pylon.InvalidArgumentError, match="models:/"):
        acme.models.resolve("racey@prod")


def test_demo_path_end_to_end(tenant_clients, platform):
    """Upload -> train on Ray -> register with lineage -> deploy -> stream tokens over gRPC and
    through the openai client -> lineage."""
    from pylon.demo import run_demo

    lines: list[str] = []
    base_url = f"http://127.0.0.1:{platform.servers['gateway'].parts.extra['http'].port}/v1"
    result = run_demo(tenant_clients["acme"], steps=40, max_tokens=40, out=lines.append, openai_base_url=base_url)
    job, mv = result["job"], result["model_version"]
    assert job.state == "succeeded" and job.output_uri.endswith("/output")
    assert {f["path"] for f in mv.files} >= {"model.safetensors", "config.json"}
    assert mv.lineage["job"] == job.name
    assert mv.lineage["dataset_digests"] == [result["dataset_version"].digest]
    assert len(result["completion"]) > 0
    assert len(result["openai_completion"]) > 0  # the stock openai client streamed from the HTTP API
    kinds = {n.kind for n in result["lineage"].nodes}
    assert kinds == {"dataset_version", "job", "checkpoint", "model_version", "deployment"}
    metrics = tenant_clients["acme"].jobs.metrics(job.name)
    assert any(m.key == "loss" for m in metrics)
    # the demo deleted its deployment: the registry no longer lists it on the version
    assert tenant_clients["acme"].models.get("stdlib-lm", mv.version).deployments == []
