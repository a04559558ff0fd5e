"""A user command as one worker of a job: its working directory unpacked, its pip requirements
installed into a site dir of its own, its checkpoint directory synced from and to object storage
around the run, its data reachable through the worker's scoped endpoint (``dataproxy.py``), and
the job's flags turned into what the process sees (the preempt file
``pylon.train.should_preempt()`` polls, then SIGTERM after the grace period; SIGKILL on cancel).

User code runs without the platform's credentials, as a user of its own where the worker can
arrange it (``isolation.py``). The worker reads what user code leaves (checkpoint files, the
"checkpoint saved" mark) without following links, so a job cannot make the worker upload a file
only the worker may read.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading

from pylon_services.scheduler.domain.spec import Command
from pylon_services.scheduler.worker.context import WorkerContext, checkpoint_prefix
from pylon_services.scheduler.worker.dataproxy import DataProxy, job_scope
from pylon_services.scheduler.worker.isolation import RunAs, decide, demote, give_to, user_environment
from pylon_services.storage.base import ObjectStore
from pylon_services.workloads import WorkloadResult

CHECKPOINT_POLL_S = 0.2
KILL_AFTER_TERM_S = 10.0
_STEP = re.compile(r"[0-9]{1,18}")


def run_command(ctx: WorkerContext) -> WorkloadResult:
    command = ctx.job.spec.workload
    assert isinstance(command, Command)
    run_as = decide(ctx.settings.job_user, ctx.settings.job_uid_base, ctx.job.key)
    ctx.log(f"pylon: user code runs as uid {run_as.uid}" if run_as.isolated
            else f"pylon: user code runs as the worker's user: {run_as.why}")
    proxy = DataProxy(ctx.store, job_scope(ctx.store, ctx.tenant, ctx.job_id, command.datasets))
    data_url, data_token = proxy.start()
    prefix = checkpoint_prefix(ctx.job)
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-job-") as work:
            ckpt_dir, flag = os.path.join(work, "checkpoint"), os.path.join(work, "preempt")
            os.makedirs(ckpt_dir)
            os.makedirs(os.path.join(work, "tmp"))
            if ctx.rank == 0 and _sync_down(ctx.store, prefix, ckpt_dir):
                ctx.log("pylon: restored the checkpoint of an earlier attempt")
            cwd = _unpack(ctx, command, work)
            give_to(work, run_as)
            _install(ctx, command, work, run_as)
            mark = os.path.join(work, "checkpoint-saved")
            contract = {"PYLON_CHECKPOINT_DIR": ckpt_dir, "PYLON_PREEMPT_FILE": flag,
                        "PYLON_CHECKPOINT_EVERY": str(ctx.checkpoint_every_steps),
                        **({"PYLON_CHECKPOINT_SAVED_FILE": mark} if ctx.rank == 0 else {}),
                        "PYLON_JOB": ctx.job_name, "PYLON_ATTEMPT": str(ctx.attempt), "PYLON_RANK": str(ctx.rank),
                        "PYLON_WORLD_SIZE": str(ctx.world_size), "PYLON_DATA_URL": data_url,
                        "PYLON_DATA_TOKEN": data_token, "HOME": work, "TMPDIR": os.path.join(work, "tmp"),
                        "PYTHONPATH": os.pathsep.join((os.path.join(work, "site"), cwd))}
            env = user_environment(os.environ, command.env, contract)
            code = _run(ctx, command, cwd, env, run_as, flag, mark, ckpt_dir)
            if ctx.rank == 0:
                _sync_up(ctx.store, prefix, ckpt_dir)
    finally:
        proxy.stop()
    return WorkloadResult(exit_code=code, error=f"exit code {code}" if code else "")


def _run(ctx: WorkerContext, command: Command, cwd: str, env: dict[str, str], run_as: RunAs, flag: str,
         mark: str, ckpt_dir: str) -> int:
    """Start the user's process, stream its output into the job's log, return its exit code."""
    proc = subprocess.Popen(list(command.argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, preexec_fn=demote(run_as.uid))
    done = threading.Event()
    threading.Thread(target=_control, args=(ctx, proc, flag, done), daemon=True).start()
    if ctx.rank == 0:
        threading.Thread(target=_upload_checkpoints, args=(ctx, ckpt_dir, mark, done), daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        ctx.log(line)
    code = proc.wait()
    done.set()
    return code


def _unpack(ctx: WorkerContext, command: Command, work: str) -> str:
    """Unpack the archived working directory into ``work/src`` (members that leave it or are links
    were refused at upload; ``filter="data"`` refuses them again)."""
    cwd = os.path.join(work, "src")
    os.makedirs(cwd)
    if command.working_dir_key:
        archive = os.path.join(work, "wd.tar.gz")
        ctx.store.get_file(command.working_dir_key, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(cwd, filter="data")
        os.unlink(archive)
    return cwd


def _install(ctx: WorkerContext, command: Command, work: str, run_as: RunAs) -> None:
    """pip install the job's requirements into ``work/site``, as the job's user (a package's build
    code is user code too)."""
    if not command.pip_requirements:
        return
    ctx.log(f"pip install {' '.join(command.pip_requirements)}")
    env = user_environment(os.environ, {}, {"HOME": work, "TMPDIR": os.path.join(work, "tmp")})
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--target", os.path.join(work, "site"),
                          *command.pip_requirements], capture_output=True, text=True, env=env, cwd=work,
                         preexec_fn=demote(run_as.uid))
    ctx.log(out.stdout[-2000:] + out.stderr[-2000:])
    if out.returncode:
        raise RuntimeError(f"pip install failed with exit code {out.returncode}")


def _sync_down(store: ObjectStore, prefix: str, into: str) -> int:
    n = 0
    for o in store.iter_all(prefix):
        path = os.path.join(into, o.key[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        store.get_file(o.key, path)
        n += 1
    return n


def _sync_up(store: ObjectStore, prefix: str, root: str) -> None:
    """Upload the regular files under ``root``, opened without following links (a link the job
    planted is skipped)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # a symlink (ELOOP) or gone
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    store.put_file(prefix + os.path.relpath(path, root), f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)


def _read_mark(mark: str) -> str:
    """The step user code wrote to the "checkpoint saved" mark: digits only, not through a link."""
    try:
        fd = os.open(mark, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd) as f:
        step = f.read(32).strip()
    return step if _STEP.fullmatch(step) else ""


def _upload_checkpoints(ctx: WorkerContext, ckpt_dir: str, mark: str, done: threading.Event) -> None:
    """Rank 0: each time user code calls ``pylon.train.checkpoint_saved(step)`` (it writes the
    step to ``mark``), upload the checkpoint directory and acknowledge in ``mark + ".done"``, so
    a checkpoint survives even a worker that dies before the final upload at exit."""
    seen = ""
    while not done.wait(CHECKPOINT_POLL_S):
        step = _read_mark(mark)
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
