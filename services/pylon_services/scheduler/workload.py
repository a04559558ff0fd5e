"""What runs inside a Ray worker for one job attempt: trainer, engine replica or user command.

Log lines and metrics go to Redis as they happen (``StreamLogs`` follows them) and the log is
archived to object storage at the end. Returns a result dict instead of raising, so the
scheduler always learns the exit code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import traceback
from typing import Any

import redis

from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store
from pylon_services.scheduler.store.redis_jobs import log_key, metrics_key


class JobSink:
    """Append-only log and metrics of one job attempt."""

    def __init__(self, settings: Settings, tenant: str, job_id: str, attempt: int) -> None:
        self.r = redis.Redis.from_url(settings.redis_url)
        self.tenant, self.job_id, self.attempt = tenant, job_id, attempt
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            self.lines.append(line)
            self.r.rpush(log_key(self.tenant, self.job_id),
                         json.dumps({"text": line, "attempt": self.attempt, "t": time.time()}))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pipe = self.r.pipeline()
        for k, v in values.items():
            pipe.rpush(metrics_key(self.tenant, self.job_id), json.dumps({"key": k, "step": step, "value": v, "t": time.time()}))
        pipe.execute()

    def stop_requested(self) -> bool:
        return bool(self.r.exists(f"pylon:jobstop:{self.tenant}:{self.job_id}"))


def run_workload(job: dict[str, Any], settings_dict: dict[str, Any], attempt: int) -> dict[str, Any]:
    settings = Settings(**settings_dict)
    sink = JobSink(settings, job["tenant"], job["id"], attempt)
    spec = job["spec"]
    sink.log(f"attempt {attempt} started on {socket.gethostname()} (pid {os.getpid()})")
    try:
        if spec.get("trainer"):
            return run_trainer(settings, job, sink)
        if spec.get("engine"):
            from pylon_services.engines.torch_engine.server import serve_replica

            serve_replica(settings, job, sink)
            return {"exit_code": 0}
        return run_command(spec["command"], sink)
    except Exception as exc:  # noqa: BLE001 - the job fails, the worker reports why
        sink.log(traceback.format_exc())
        return {"exit_code": 1, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        store = object_store(settings)
        store.put(f"tenants/{job['tenant']}/jobs/{job['id']}/logs/attempt-{attempt}.log",
                  ("\n".join(sink.lines) + "\n").encode())


def _read_datasets(settings: Settings, tenant: str, names: list[str]) -> tuple[bytes, list[str]]:
    from pylon_services.ingest.domain.datasets import Datasets

    datasets = Datasets(object_store(settings))
    parts, digests = [], []
    for name in names:
        _, t, _, d, _, v = name.split("/")
        if t not in (tenant, "-"):
            raise ValueError(f"dataset {name} is not in tenant {tenant}")
        version = datasets.get_version(tenant, d, v)
        digests.append(version["digest"])
        parts.extend(datasets.store.get(f["object_key"]) for f in version["files"])
    return b"\n".join(parts), digests


def run_trainer(settings: Settings, job: dict[str, Any], sink: JobSink) -> dict[str, Any]:
    from pylon_services.trainers.tiny_gpt import TrainConfig, train

    trainer = job["spec"]["trainer"]
    cfg = TrainConfig.from_dict(trainer.get("config", {}))
    corpus, digests = _read_datasets(settings, job["tenant"], trainer.get("datasets", []))
    sink.log(f"training tiny-gpt on {len(corpus)} bytes from {len(digests)} dataset version(s): "
             f"{cfg.steps} steps, batch {cfg.batch_size}, block {cfg.block_size}")

    def on_metrics(m: dict[str, Any]) -> None:
        sink.metrics(int(m["step"]), {k: float(v) for k, v in m.items() if k != "step"})
        sink.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))

    result = train(corpus, cfg, on_metrics=on_metrics, should_stop=sink.stop_requested)
    out = f"tenants/{job['tenant']}/jobs/{job['id']}/output"
    store = object_store(settings)
    for name, data in result.files.items():
        store.put(f"{out}/{name}", data)
    sink.log(f"done: {result.steps_done} steps, final loss {result.final_loss:.4f}, "
             f"{result.tokens_per_s:.0f} tokens/s; checkpoint at {out}")
    return {"exit_code": 0, "output_uri": out, "dataset_digests": digests,
            "metrics": {"loss": result.final_loss, "steps": result.steps_done, "tokens_per_s": result.tokens_per_s}}


def run_command(command: dict[str, Any], sink: JobSink) -> dict[str, Any]:
    env = {**os.environ, **command.get("env", {})}
    proc = subprocess.Popen(command["argv"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.log(line)
    code = proc.wait()
    return {"exit_code": code, "error": f"exit code {code}" if code else ""}
