"""What runs inside Ray for one worker of one job attempt: trainer, engine replica or user command.

``run_workload`` runs as a Ray task owned by the detached launcher actor (``launcher.py``), so the
work survives the scheduler that launched it; it reports the result by writing it to Redis
(``pylon:jobresults:...``) and to the dispatch stream. Log lines and metrics
go to Redis as they happen (``StreamLogs`` follows them) and the log is archived to object
storage at the end. A watcher polls the job's stop and preempt flags: preempt first raises the
flag user code polls (``pylon.train.should_preempt()``), then SIGTERMs the process after the
grace period; stop (cancel) kills it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import traceback
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pylon_services.runtime.settings import Settings
from pylon_services.runtime.stores import object_store
from pylon_services.scheduler.domain.job import PREEMPTED_EXIT_CODE
from pylon_services.scheduler.store.redis_jobs import log_key, metrics_key, preempt_key, results_key, stop_key
from pylon_services.scheduler.store.redis_sched import EVENTS, EVENTS_MAXLEN

METRICS_PREFIX = "##pylon-metrics "
RATE_EVERY_S = 2.0
# The built-in trainer's periodic checkpoint when the job's checkpoint_every_steps is 0.
TRAINER_CHECKPOINT_EVERY = 100
LATEST_CHECKPOINT = "latest"
CHECKPOINT_POLL_S = 0.2


class JobSink:
    """Append-only log and metrics of one job attempt, plus its control flags."""

    def __init__(self, settings: Settings, job: dict[str, Any], attempt: int, rank: int = 0) -> None:
        # Retries ride out a Redis restart (AOF keeps the data; only the connections break).
        self.r = redis.Redis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 8),
                                      retry_on_error=[redis.ConnectionError])
        self.tenant, self.job_id, self.attempt, self.rank = job["tenant"], job["id"], attempt, rank
        types = job.get("worker_gpu_types") or []
        self.gpu_type = types[rank] if rank < len(types) else job.get("gpu_type", "")
        # A gang=false job split over GPU types runs at its slowest worker's pace: its step rate
        # says nothing about one type, so it is not fed to the throughput table.
        self.rate_gpu_type = "" if len(set(types)) > 1 else self.gpu_type
        self.job_type = job["spec"].get("job_type") or next(
            (k for k in ("trainer", "command", "engine") if job["spec"].get(k)), "")
        self.lines: list[str] = []
        self.preempt = threading.Event()
        self.stop = threading.Event()
        self._rate_at: tuple[float, int] | None = None

    def log(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            if line.startswith(METRICS_PREFIX):
                self._user_metrics(line[len(METRICS_PREFIX):])
                continue
            self.lines.append(line)
            self.r.rpush(log_key(self.tenant, self.job_id),
                         json.dumps({"text": line, "attempt": self.attempt, "t": time.time()}))

    def _user_metrics(self, payload: str) -> None:
        try:
            values = json.loads(payload)
            step = int(values.pop("step"))
            self.metrics(step, {k: float(v) for k, v in values.items()})
        except (ValueError, KeyError, TypeError) as e:
            self.log(f"pylon: ignored a malformed metrics report ({e})")

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pipe = self.r.pipeline()
        for k, v in values.items():
            pipe.rpush(metrics_key(self.tenant, self.job_id), json.dumps({"key": k, "step": step, "value": v, "t": time.time()}))
        pipe.execute()
        self._report_rate(step)

    def _report_rate(self, step: int) -> None:
        """Every few seconds, tell the scheduler this worker's step rate (throughput table) and
        step (remaining work). Rank 0 speaks for the gang."""
        now = time.time()
        if self.rank != 0:
            return
        if self._rate_at is None or step < self._rate_at[1]:
            self._rate_at = (now, step)
            return
        t0, s0 = self._rate_at
        if now - t0 >= RATE_EVERY_S:
            event = {"type": "progress", "job": f"{self.tenant}/{self.job_id}", "attempt": self.attempt,
                     "step": step, "rate": (step - s0) / (now - t0), "gpu_type": self.rate_gpu_type, "job_type": self.job_type}
            self.r.xadd(EVENTS, {"e": json.dumps(event)}, maxlen=EVENTS_MAXLEN, approximate=True)
            self._rate_at = (now, step)

    def report(self, result: dict[str, Any]) -> None:
        """Write this worker's result where a (possibly new) scheduler will find it."""
        result = {**result, "preempted": self.preempt.is_set()}
        self.r.hset(results_key(self.tenant, self.job_id, self.attempt), str(self.rank), json.dumps(result))
        event = {"type": "result", "job": f"{self.tenant}/{self.job_id}", "attempt": self.attempt, "rank": self.rank}
        self.r.xadd(EVENTS, {"e": json.dumps(event)}, maxlen=EVENTS_MAXLEN, approximate=True)

    def stop_requested(self) -> bool:
        return self.stop.is_set() or self.preempt.is_set()

    def watch_flags(self, done: threading.Event) -> float:
        """Poll the flags until ``done``; returns the preempt grace period once preempted."""
        while not done.wait(0.3):
            if self.r.exists(stop_key(self.tenant, self.job_id)):
                self.stop.set()
                return 0.0
            grace = self.r.get(preempt_key(self.tenant, self.job_id))
            if grace is not None and not self.preempt.is_set():
                self.preempt.set()
                self.log(f"pylon: preemption requested; {float(grace):g}s to checkpoint and exit")
                return float(grace)
        return 0.0


def run_workload(job: dict[str, Any], settings_dict: dict[str, Any], attempt: int, rank: int = 0) -> dict[str, Any]:
    """Run the workload and report its result (never raises: the scheduler always learns an exit code)."""
    settings = Settings(**settings_dict)
    sink = JobSink(settings, job, attempt, rank)
    spec = job["spec"]
    sink.log(f"attempt {attempt} worker {rank} started on {socket.gethostname()} (pid {os.getpid()}, "
             f"gpu type {sink.gpu_type or 'cpu'})")
    result: dict[str, Any] = {"exit_code": 1, "error": "did not run"}
    try:
        if spec.get("trainer"):
            result = run_trainer(settings, job, sink)
        elif spec.get("engine"):
            from pylon_services.engines.torch_engine.server import serve_replica

            serve_replica(settings, job, sink)
            result = {"exit_code": 0}
        else:
            result = run_command(settings, job, sink)
    except Exception as exc:  # noqa: BLE001 - the job fails, the worker reports why
        sink.log(traceback.format_exc())
        result = {"exit_code": 1, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            object_store(settings).put(f"tenants/{job['tenant']}/jobs/{job['id']}/logs/attempt-{attempt}-r{rank}.log",
                                       ("\n".join(sink.lines) + "\n").encode())
        finally:
            sink.report(result)
    return result


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


def _checkpoint_prefix(job: dict[str, Any]) -> str:
    return f"tenants/{job['tenant']}/jobs/{job['id']}/checkpoint/"


def _save_checkpoint(store: Any, job: dict[str, Any], step: int, files: dict[str, bytes]) -> None:
    """Write a whole checkpoint under ``checkpoint/step-N/``, then point ``checkpoint/latest`` at
    it, then drop older steps: a crash mid-write never leaves a mix of two steps as the latest."""
    prefix, folder = _checkpoint_prefix(job), f"step-{step:012d}/"
    for name, data in files.items():
        store.put(prefix + folder + name, data)
    store.put(prefix + LATEST_CHECKPOINT, folder.encode())
    for o in list(store.iter_all(prefix + "step-")):
        if not o.key.startswith(prefix + folder):
            store.delete(o.key)


def _load_checkpoint(store: Any, job: dict[str, Any]) -> dict[str, bytes]:
    """The latest checkpoint an earlier attempt left (periodic or on preemption), else {}; reads
    the flat layout of checkpoints written before ``latest`` existed too."""
    prefix = _checkpoint_prefix(job)
    if store.exists(prefix + LATEST_CHECKPOINT):
        folder = prefix + store.get(prefix + LATEST_CHECKPOINT).decode()
        return {o.key[len(folder):]: store.get(o.key) for o in store.iter_all(folder)}
    return {o.key[len(prefix):]: store.get(o.key) for o in store.iter_all(prefix) if "/" not in o.key[len(prefix):]}


def checkpoint_every(spec: dict[str, Any], default: int = 0) -> int:
    """The job's ``checkpoint_every_steps`` (an int64, so a string in the JSON-mapped spec), or
    ``default`` when it is 0/unset."""
    return int(spec.get("checkpoint_every_steps", 0) or 0) or default


def run_trainer(settings: Settings, job: dict[str, Any], sink: JobSink) -> dict[str, Any]:
    """The built-in trainer: resumes from the job's checkpoint if an earlier attempt left one,
    and on preemption saves its state there and exits with PREEMPTED_EXIT_CODE."""
    from pylon_services.ml.checkpoint import load_trainer_state
    from pylon_services.trainers.tiny_gpt import TrainConfig, train

    trainer = job["spec"]["trainer"]
    cfg = TrainConfig.from_dict(trainer.get("config", {}))
    corpus, digests = _read_datasets(settings, job["tenant"], trainer.get("datasets", []))
    store = object_store(settings)
    ckpt = _load_checkpoint(store, job)
    base = {path: store.get(key) for path, key in trainer.get("base_model_files", {}).items()}
    every = checkpoint_every(job["spec"], TRAINER_CHECKPOINT_EVERY)
    sink.log(f"training tiny-gpt on {len(corpus)} bytes from {len(digests)} dataset version(s): "
             f"{cfg.steps} steps, batch {cfg.batch_size}, block {cfg.block_size}, checkpoint every {every} steps"
             + (f"; fine-tuning {trainer['base_model_version']}" if base else "")
             + (" (resuming from checkpoint)" if ckpt else ""))
    if ckpt:
        sink.log(f"pylon: resuming at step {load_trainer_state(ckpt)['step']}")

    def on_checkpoint(step: int, files: dict[str, bytes]) -> None:
        _save_checkpoint(store, job, step, files)
        sink.log(f"pylon: checkpoint of step {step} saved")

    def on_metrics(m: dict[str, Any]) -> None:
        sink.metrics(int(m["step"]), {k: float(v) for k, v in m.items() if k != "step"})
        sink.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))

    done = threading.Event()
    threading.Thread(target=sink.watch_flags, args=(done,), daemon=True).start()
    try:
        result = train(corpus, cfg, on_metrics=on_metrics, should_stop=sink.stop_requested, resume_from=ckpt or None,
                       init_from=base or None, checkpoint_every=every, on_checkpoint=on_checkpoint)
    finally:
        done.set()
    if result.stopped_early:
        _save_checkpoint(store, job, result.steps_done, result.files)
        sink.log(f"stopped at step {result.steps_done}; checkpoint saved for resume")
        return {"exit_code": PREEMPTED_EXIT_CODE, "error": "preempted", "step": result.steps_done}
    out = f"tenants/{job['tenant']}/jobs/{job['id']}/output"
    for name, data in result.files.items():
        store.put(f"{out}/{name}", data)
    sink.log(f"done: {result.steps_done} steps, final loss {result.final_loss:.4f}, "
             f"{result.tokens_per_s:.0f} tokens/s; checkpoint at {out}")
    return {"exit_code": 0, "output_uri": out, "dataset_digests": digests, "step": result.steps_done,
            "metrics": {"loss": result.final_loss, "steps": result.steps_done, "tokens_per_s": result.tokens_per_s}}


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the worker dies, so a killed actor leaves no orphan."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _sync_down(settings: Settings, prefix: str, into: str) -> int:
    store = object_store(settings)
    n = 0
    for o in store.iter_all(prefix):
        path = os.path.join(into, o.key[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        store.get_file(o.key, path)
        n += 1
    return n


def _sync_up(settings: Settings, prefix: str, root: str) -> None:
    store = object_store(settings)
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            store.put_file(prefix + os.path.relpath(path, root), path)


def _prepare_dir(settings: Settings, command: dict[str, Any], work: str, sink: JobSink) -> str:
    """Unpack the archived working directory and install its pip requirements into it."""
    cwd = os.path.join(work, "src")
    os.makedirs(cwd)
    if command.get("working_dir_key"):
        archive = os.path.join(work, "wd.tar.gz")
        object_store(settings).get_file(command["working_dir_key"], archive)
        with tarfile.open(archive) as tar:
            tar.extractall(cwd, filter="data")
    if command.get("pip_requirements"):
        import sys

        sink.log(f"pip install {' '.join(command['pip_requirements'])}")
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--target", os.path.join(work, "site"),
                              *command["pip_requirements"]], capture_output=True, text=True)
        sink.log(out.stdout[-2000:] + out.stderr[-2000:])
        if out.returncode:
            raise RuntimeError(f"pip install failed with exit code {out.returncode}")
    return cwd


def run_command(settings: Settings, job: dict[str, Any], sink: JobSink) -> dict[str, Any]:
    """A user command: checkpoint dir synced from/to object storage around the run, preempt
    flag file for ``pylon.train.should_preempt()``, SIGTERM after the grace period."""
    command = job["spec"]["command"]
    with tempfile.TemporaryDirectory(prefix="pylon-job-") as work:
        cwd = _prepare_dir(settings, command, work, sink)
        ckpt_dir, flag = os.path.join(work, "checkpoint"), os.path.join(work, "preempt")
        os.makedirs(ckpt_dir)
        if sink.rank == 0 and _sync_down(settings, _checkpoint_prefix(job), ckpt_dir):
            sink.log("pylon: restored the checkpoint of an earlier attempt")
        mark = os.path.join(work, "checkpoint-saved")
        env = {**os.environ, **command.get("env", {}), "PYLON_CHECKPOINT_DIR": ckpt_dir, "PYLON_PREEMPT_FILE": flag,
               "PYLON_CHECKPOINT_EVERY": str(checkpoint_every(job["spec"])),
               **({"PYLON_CHECKPOINT_SAVED_FILE": mark} if sink.rank == 0 else {}),
               "PYLON_JOB": f"tenants/{job['tenant']}/jobs/{job['id']}", "PYLON_ATTEMPT": str(sink.attempt),
               "PYLON_RANK": str(sink.rank), "PYLON_WORLD_SIZE": str(job["spec"].get("workers", 1)),
               "PYTHONPATH": os.pathsep.join(p for p in (os.path.join(work, "site"), cwd,
                                                         os.environ.get("PYTHONPATH", "")) if p)}
        proc = subprocess.Popen(command["argv"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, preexec_fn=_die_with_parent)
        done = threading.Event()
        threading.Thread(target=_control, args=(sink, proc, flag, done), daemon=True).start()
        if sink.rank == 0:
            threading.Thread(target=_upload_checkpoints, args=(settings, job, ckpt_dir, mark, done, sink),
                             daemon=True).start()
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.log(line)
        code = proc.wait()
        done.set()
        if sink.rank == 0:
            _sync_up(settings, _checkpoint_prefix(job), ckpt_dir)
    return {"exit_code": code, "error": f"exit code {code}" if code else ""}


def _upload_checkpoints(settings: Settings, job: dict[str, Any], ckpt_dir: str, mark: str, done: threading.Event,
                        sink: JobSink) -> None:
    """Rank 0: each time user code calls ``pylon.train.checkpoint_saved(step)`` (it writes the
    step to ``mark``), upload the checkpoint directory and acknowledge in ``mark + ".done"``, so
    a checkpoint survives even a worker that dies before the final upload at exit."""
    seen = ""
    while not done.wait(CHECKPOINT_POLL_S):
        try:
            with open(mark) as f:
                step = f.read().strip()
        except OSError:
            continue
        if not step or step == seen:
            continue
        _sync_up(settings, _checkpoint_prefix(job), ckpt_dir)
        seen = step
        with open(mark + ".tmp", "w") as f:
            f.write(step)
        os.replace(mark + ".tmp", mark + ".done")
        sink.log(f"pylon: checkpoint of step {step} uploaded")


def _control(sink: JobSink, proc: subprocess.Popen[str], flag: str, done: threading.Event) -> None:
    """Turn the job's flags into what the process sees: the preempt file, then SIGTERM/SIGKILL."""
    grace = sink.watch_flags(done)
    if sink.stop.is_set():
        proc.kill()
        return
    if not sink.preempt.is_set():
        return
    open(flag, "w").close()
    if not done.wait(grace):
        sink.log(f"pylon: grace period of {grace:g}s over; sending SIGTERM")
        proc.terminate()
        if not done.wait(10):
            proc.kill()
