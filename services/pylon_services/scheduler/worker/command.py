"""A user command as one worker of a job: its working directory unpacked, its pip requirements
installed into a site dir of its own, its checkpoint directory synced from and to object storage
around the run, and the job's flags turned into what the process sees (the preempt file
``pylon.train.should_preempt()`` polls, then SIGTERM after the grace period; SIGKILL on cancel).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading

from pylon_services.scheduler.domain.spec import Command
from pylon_services.scheduler.worker.context import WorkerContext, checkpoint_prefix
from pylon_services.storage.base import ObjectStore
from pylon_services.workloads import WorkloadResult

CHECKPOINT_POLL_S = 0.2
KILL_AFTER_TERM_S = 10.0


def run_command(ctx: WorkerContext) -> WorkloadResult:
    command = ctx.job.spec.workload
    assert isinstance(command, Command)
    prefix = checkpoint_prefix(ctx.job)
    with tempfile.TemporaryDirectory(prefix="pylon-job-") as work:
        cwd = _prepare_dir(ctx, command, work)
        ckpt_dir, flag = os.path.join(work, "checkpoint"), os.path.join(work, "preempt")
        os.makedirs(ckpt_dir)
        if ctx.rank == 0 and _sync_down(ctx.store, prefix, ckpt_dir):
            ctx.log("pylon: restored the checkpoint of an earlier attempt")
        mark = os.path.join(work, "checkpoint-saved")
        proc = subprocess.Popen(list(command.argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=_environment(ctx, command, work, cwd, ckpt_dir, flag, mark),
                                preexec_fn=_die_with_parent)
        done = threading.Event()
        threading.Thread(target=_control, args=(ctx, proc, flag, done), daemon=True).start()
        if ctx.rank == 0:
            threading.Thread(target=_upload_checkpoints, args=(ctx, ckpt_dir, mark, done), daemon=True).start()
        assert proc.stdout is not None
        for line in proc.stdout:
            ctx.log(line)
        code = proc.wait()
        done.set()
        if ctx.rank == 0:
            _sync_up(ctx.store, prefix, ckpt_dir)
    return WorkloadResult(exit_code=code, error=f"exit code {code}" if code else "")


def _environment(ctx: WorkerContext, command: Command, work: str, cwd: str, ckpt_dir: str, flag: str,
                 mark: str) -> dict[str, str]:
    """What the user process sees: the job's own env plus the ``pylon.train`` contract."""
    return {**os.environ, **command.env, "PYLON_CHECKPOINT_DIR": ckpt_dir, "PYLON_PREEMPT_FILE": flag,
            "PYLON_CHECKPOINT_EVERY": str(ctx.checkpoint_every_steps),
            **({"PYLON_CHECKPOINT_SAVED_FILE": mark} if ctx.rank == 0 else {}),
            "PYLON_JOB": ctx.job_name, "PYLON_ATTEMPT": str(ctx.attempt),
            "PYLON_RANK": str(ctx.rank), "PYLON_WORLD_SIZE": str(ctx.world_size),
            "PYTHONPATH": os.pathsep.join(p for p in (os.path.join(work, "site"), cwd,
                                                      os.environ.get("PYTHONPATH", "")) if p)}


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the worker dies, so a killed actor leaves no orphan."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _sync_down(store: ObjectStore, prefix: str, into: str) -> int:
    n = 0
    for o in store.iter_all(prefix):
        path = os.path.join(into, o.key[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        store.get_file(o.key, path)
        n += 1
    return n


def _sync_up(store: ObjectStore, prefix: str, root: str) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            store.put_file(prefix + os.path.relpath(path, root), path)


def _prepare_dir(ctx: WorkerContext, command: Command, work: str) -> str:
    """Unpack the archived working directory and install its pip requirements beside it."""
    cwd = os.path.join(work, "src")
    os.makedirs(cwd)
    if command.working_dir_key:
        archive = os.path.join(work, "wd.tar.gz")
        ctx.store.get_file(command.working_dir_key, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(cwd, filter="data")
    if command.pip_requirements:
        ctx.log(f"pip install {' '.join(command.pip_requirements)}")
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--target", os.path.join(work, "site"),
                              *command.pip_requirements], capture_output=True, text=True)
        ctx.log(out.stdout[-2000:] + out.stderr[-2000:])
        if out.returncode:
            raise RuntimeError(f"pip install failed with exit code {out.returncode}")
    return cwd


def _upload_checkpoints(ctx: WorkerContext, ckpt_dir: str, mark: str, done: threading.Event) -> None:
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
        _sync_up(ctx.store, checkpoint_prefix(ctx.job), ckpt_dir)
        seen = step
        with open(mark + ".tmp", "w") as f:
            f.write(step)
        os.replace(mark + ".tmp", mark + ".done")
        ctx.log(f"pylon: checkpoint of step {step} uploaded")


def _control(ctx: WorkerContext, proc: subprocess.Popen[str], flag: str, done: threading.Event) -> None:
    """Turn the job's flags into what the process sees: the preempt file, then SIGTERM/SIGKILL."""
    ctx.watch_flags(done)
    if ctx.stop.is_set():
        proc.kill()
        return
    if not ctx.preempt.is_set():
        return
    open(flag, "w").close()
    if not done.wait(ctx.preempt_grace_s):
        ctx.log(f"pylon: grace period of {ctx.preempt_grace_s:g}s over; sending SIGTERM")
        proc.terminate()
        if not done.wait(KILL_AFTER_TERM_S):
            proc.kill()
