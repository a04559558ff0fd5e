"""Execution on Ray through the real platform: cancel frees everything, a worker process that
dies is noticed and retried with its exit code, max_runtime is enforced, and `pylon jobs submit`
streams the log and exits with the job's result."""

from __future__ import annotations

import sys
import time

import pytest

from tests.support.waiting import used_gpus, wait_for

pytestmark = pytest.mark.integration


def _pgs(prefix: str) -> list[dict]:
    import ray

    return [pg for pg in ray.util.placement_group_table().values()
            if pg.get("name", "").startswith(prefix) and pg.get("state") != "REMOVED"]


def test_cancel_of_a_running_job_frees_its_gpus_and_placement_group(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    marker = tmp_path / "still-running"
    script = f"import time\nwhile True:\n    open({str(marker)!r}, 'w').write(str(time.time()))\n    time.sleep(0.2)\n"
    job = acme.jobs.submit({"resources": {"gpus": 2, "gpu_types": ["P100"]},
                            "command": {"argv": [sys.executable, "-c", script]}})
    wait_for(lambda: acme.jobs.get(job.name).state == "running" and marker.exists(), 90, "the job to run")
    assert used_gpus(acme, "P100") == 2
    job_id = job.name.rsplit("/", 1)[1]
    assert _pgs(f"pylon-acme-{job_id}-")
    assert acme.jobs.cancel(job.name).state == "cancelled"
    wait_for(lambda: not _pgs(f"pylon-acme-{job_id}-"), 30, "the placement group to be removed")
    wait_for(lambda: used_gpus(acme, "P100") == 0, 30, "the GPUs to be free")
    before = marker.read_text()
    time.sleep(1.0)
    assert marker.read_text() == before, "the user process still runs after cancel"
    assert acme.jobs.get(job.name).state == "cancelled"


def test_worker_process_that_dies_is_retried_then_failed_with_its_exit_code(tenant_clients):
    acme = tenant_clients["acme"]
    # The command kills the Ray worker process running it: the task dies without a result.
    job = acme.jobs.submit({"max_retries": 1, "command": {"argv": ["sh", "-c", "echo dying; sleep 0.5; kill -9 $PPID"]}})
    job = acme.jobs.wait(job.name, timeout=180)
    assert (job.state, job.exit_code, job.attempt, job.retries) == ("failed", -1, 2, 1)
    assert "worker process lost" in job.message
    assert "dying" in job.last_log_lines


def test_max_runtime_is_enforced(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"max_runtime": "2s", "command": {"argv": ["sleep", "60"]}})
    job = acme.jobs.wait(job.name, timeout=90)
    assert job.state == "failed" and "max runtime" in job.message


def test_cli_submit_streams_logs_and_exits_with_the_job_result(platform, tenant_clients, tmp_path):
    from typer.testing import CliRunner

    from pylon.cli import app
    from tests.support.platform import ADMIN_KEY

    ok, bad = tmp_path / "ok.yaml", tmp_path / "bad.yaml"
    ok.write_text("command:\n  argv: [sh, -c, 'echo hello-from-cli']\n")
    bad.write_text("max_retries: 0\ncommand:\n  argv: [sh, -c, 'echo failing; exit 4']\n")
    base = ["--address", platform.addresses["scheduler"], "--token", ADMIN_KEY]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "jobs", "submit", str(ok)])
    assert res.exit_code == 0 and "hello-from-cli" in res.output, res.output
    res = runner.invoke(app, [*base, "jobs", "submit", str(bad)])
    assert res.exit_code == 1 and "failing" in res.output, res.output
    res = runner.invoke(app, [*base, "cluster", "--json"])
    assert res.exit_code == 0 and '"gpu_type": "K80"' in res.output
    res = runner.invoke(app, [*base, "queues", "--json"])
    assert res.exit_code == 0


def test_command_runs_in_its_uploaded_working_directory(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("GREETING = 'hello from the working dir'\n")
    (src / "main.py").write_text("import pkg\nprint(pkg.GREETING)\n")
    job = acme.jobs.submit({"command": {"argv": [sys.executable, "main.py"], "working_dir": str(src)}})
    assert job.spec["command"]["working_dir_key"].startswith("tenants/acme/workdirs/sha256-")
    job = acme.jobs.wait(job.name, timeout=120)
    assert job.state == "succeeded", job.message
    assert "hello from the working dir" in list(acme.jobs.logs(job.name))


def test_working_dir_key_of_another_tenant_and_bad_archives_are_rejected(tenant_clients):
    from pylon.errors import PylonError
    from pylon.scheduler.v1 import scheduler_pb2

    acme = tenant_clients["acme"]
    with pytest.raises(PylonError) as e:
        acme.jobs.submit({"command": {"argv": ["true"], "working_dir_key": "tenants/globex/workdirs/sha256-x.tar.gz"}})
    assert "INVALID_ARGUMENT" in str(e.value.code)
    with pytest.raises(PylonError) as e:
        acme.call(acme.scheduler.UploadWorkingDir,
                  iter([scheduler_pb2.UploadWorkingDirRequest(parent="tenants/-", chunk=b"not a tarball")]))
    assert "INVALID_ARGUMENT" in str(e.value.code) and "tar.gz" in str(e.value)


def test_gang_of_two_workers_runs_in_one_placement_group_with_ranks(tenant_clients):
    acme = tenant_clients["acme"]
    job = acme.jobs.submit({"workers": 2, "resources": {"gpus": 1, "gpu_types": ["K80"]},
                            "command": {"argv": ["sh", "-c", "echo rank=$PYLON_RANK of $PYLON_WORLD_SIZE"]}})
    job = acme.jobs.wait(job.name, timeout=120)
    assert (job.state, job.gpu_type) == ("succeeded", "K80")
    logs = list(acme.jobs.logs(job.name))
    assert "rank=0 of 2" in logs and "rank=1 of 2" in logs


def test_explain_estimates_the_start_from_the_running_jobs_progress(tenant_clients):
    acme = tenant_clients["acme"]
    script = ("import time, pylon.train as t\n"
              "for s in range(1, 101):\n    time.sleep(0.1)\n    t.report(s, loss=1.0)\n")
    first = acme.jobs.submit({"total_steps": 100, "resources": {"gpus": 2, "gpu_types": ["V100"]},
                              "command": {"argv": [sys.executable, "-c", script]}})
    wait_for(lambda: acme.jobs.get(first.name).step >= 30, 90, "the first job to report progress")
    second = acme.jobs.submit({"resources": {"gpus": 2, "gpu_types": ["V100"]}, "command": {"argv": ["true"]}})
    why = wait_for(lambda: (w := acme.jobs.explain(second.name)).estimated_start_time and w, 30, "an estimate")
    now = time.time()
    assert now < why.estimated_start_time.timestamp() < now + 30, why  # about 7 s of the first job's work are left
    assert why.position == 1 and why.reasons
    assert acme.jobs.wait(second.name, timeout=120).state == "succeeded"
    assert acme.jobs.wait(first.name, timeout=60).state == "succeeded"


def _wheel(directory, name: str, body: str) -> str:
    """A minimal pure-Python wheel (pip installs it from the file, without an index)."""
    import base64
    import hashlib
    import zipfile

    files = {f"{name}.py": body,
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: pylon-tests\nRoot-Is-Purelib: true\n"
                                           "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    path = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
        z.writestr(f"{name}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return str(path)


def test_pip_requirements_are_installed_for_the_command_and_a_bad_one_fails_the_job(tenant_clients, tmp_path):
    acme = tenant_clients["acme"]
    wheel = _wheel(tmp_path, "pylon_reqtest", "VALUE = 42\n")
    job = acme.jobs.submit({"command": {"argv": [sys.executable, "-c", "import pylon_reqtest; print('value', "
                                                                        "pylon_reqtest.VALUE)"],
                                        "pip_requirements": [wheel]}})
    job = acme.jobs.wait(job.name, timeout=180)
    assert job.state == "succeeded", (job.message, job.last_log_lines)
    logs = "".join(acme.jobs.logs(job.name))
    assert "value 42" in logs and "pip install" in logs
    # The package went into the job's own site dir, not the environment the workers run in.
    import importlib.util

    assert importlib.util.find_spec("pylon_reqtest") is None
    bad = acme.jobs.submit({"max_retries": 0, "command": {"argv": ["true"],
                                                          "pip_requirements": [str(tmp_path / "missing-1.0-py3-none-any.whl")]}})
    bad = acme.jobs.wait(bad.name, timeout=180)
    assert bad.state == "failed" and "pip install failed" in bad.message, bad.message
