"""A user command as one worker of a job: its working directory unpacked, its pip requirements
installed into a site dir of its own, its checkpoint directory restored from and uploaded to
object storage, its gang's rendezvous passed as torchrun's variables, its data reachable through
the worker's scoped endpoint (``dataproxy.py``), and the job's flags turned into what the process
sees (the preempt file ``pylon.train.should_preempt()`` polls, then SIGTERM after the grace
period; SIGKILL on cancel).

Checkpoints (every rank its own ``PYLON_CHECKPOINT_DIR``): before start, each rank's directory
is restored from the newest whole checkpoint (``workloads/checkpoints.py``). Each time user code
marks a step saved (``pylon.train.save_checkpoint`` / ``checkpoint_saved`` write it to
``PYLON_CHECKPOINT_SAVED_FILE``), the worker snapshots the directory (hard links, so the process
can go on writing its next checkpoint under new names) and uploads it in the background as that
step, acknowledging in the mark's ``.done`` file once it is up (``!step`` when it failed). What a
rank leaves unmarked at exit (a preempted job's last save) is uploaded as step
``max(marked, restored) + 1``; in a gang it becomes visible only if every rank left one.

User code runs without the platform's credentials, as a user of its own where the worker can
arrange it (``isolation.py``). The worker reads what user code leaves (checkpoint files, the
"checkpoint saved" mark) without following links, so a job cannot make the worker upload a file
only the worker may read.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator

from pylon_services.scheduler.domain.spec import Command
from pylon_services.scheduler.worker.context import WorkerContext, checkpoint_prefix
from pylon_services.scheduler.worker.dataproxy import DataProxy, job_scope
from pylon_services.scheduler.worker.isolation import RunAs, decide, demote, give_to, user_environment
from pylon_services.workloads import WorkloadResult
from pylon_services.workloads.checkpoints import CheckpointWriter, restore_checkpoint

CHECKPOINT_POLL_S = 0.2
KILL_AFTER_TERM_S = 10.0
CHECKPOINT_KEEP = 3
# How long ranks other than 0 wait for rank 0's address (its worker may start minutes later).
RENDEZVOUS_TIMEOUT_S = 600.0
# How long rank 0 waits for the other ranks' parts of a checkpoint left at exit (each rank
# decides alone whether it left one, so a part may never come).
EXIT_PART_TIMEOUT_S = 30.0
_STEP = re.compile(r"[0-9]{1,18}")
# Where the platform's own ``pylon`` SDK lives: user code sees the SDK of the worker that runs
# it (the ``pylon.train`` protocol is the worker's), after anything the job installs itself.
_SDK_SPEC = importlib.util.find_spec("pylon")
_SDK_ROOT = os.path.dirname(os.path.dirname(_SDK_SPEC.origin)) if _SDK_SPEC and _SDK_SPEC.origin else ""


def run_command(ctx: WorkerContext) -> WorkloadResult:
    command = ctx.job.spec.workload
    assert isinstance(command, Command)
    run_as = decide(ctx.settings.job_user, ctx.settings.job_uid_base, ctx.job.key)
    ctx.log(f"pylon: user code runs as uid {run_as.uid}" if run_as.isolated
            else f"pylon: user code runs as the worker's user: {run_as.why}")
    scope = job_scope(ctx.store, ctx.tenant, ctx.job_id, command.datasets)
    proxy = DataProxy(ctx.store, scope)
    data_url, data_token = proxy.start()
    try:
        # Before the slow parts (restore, unpack, pip install): rank 0 publishes at once, and the
        # others have the address whenever they get here.
        master_addr, master_port = ctx.rendezvous(RENDEZVOUS_TIMEOUT_S)
        with tempfile.TemporaryDirectory(prefix="pylon-job-") as work, \
                tempfile.TemporaryDirectory(prefix="pylon-ckpt-") as staging:
            ckpt_dir, flag = os.path.join(work, "checkpoint"), os.path.join(work, "preempt")
            os.makedirs(ckpt_dir)
            os.makedirs(os.path.join(work, "tmp"))
            mark = os.path.join(work, "checkpoint-saved")
            ckpts = CommandCheckpoints(ctx, ckpt_dir, mark, staging)
            restored = ckpts.restore()
            if restored is not None:
                ctx.log(f"pylon: restored the checkpoint of step {restored} of an earlier attempt")
            cwd = _unpack(ctx, command, work)
            give_to(work, run_as)
            _install(ctx, command, work, run_as)
            contract = {"PYLON_CHECKPOINT_DIR": ckpt_dir, "PYLON_PREEMPT_FILE": flag,
                        "PYLON_CHECKPOINT_EVERY": str(ctx.checkpoint_every_steps),
                        "PYLON_CHECKPOINT_SAVED_FILE": mark,
                        "PYLON_JOB": ctx.job_name, "PYLON_ATTEMPT": str(ctx.attempt), "PYLON_RANK": str(ctx.rank),
                        "PYLON_WORLD_SIZE": str(ctx.world_size), "PYLON_GPUS": f"{command_gpus(ctx):g}",
                        "PYLON_DATA_URL": data_url, "PYLON_DATA_TOKEN": data_token,
                        "PYLON_DATASETS": json.dumps(scope.datasets),
                        **torchrun_env(ctx.rank, ctx.world_size, master_addr, master_port),
                        "HOME": work, "TMPDIR": os.path.join(work, "tmp"),
                        "PYTHONPATH": os.pathsep.join(p for p in (os.path.join(work, "site"), cwd, _SDK_ROOT) if p)}
            env = user_environment(os.environ, command.env, contract)
            code = _run(ctx, command, cwd, env, run_as, flag, ckpts)
            ckpts.finish()
    finally:
        proxy.stop()
    return WorkloadResult(exit_code=code, error=f"exit code {code}" if code else "")


def command_gpus(ctx: WorkerContext) -> float:
    return float(ctx.job.spec.resources.gpus)


def torchrun_env(rank: int, world_size: int, master_addr: str, master_port: int) -> dict[str, str]:
    """What torchrun gives each process, one process per worker: ``init_process_group`` with
    the default ``env://`` works unchanged in user code."""
    return {"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(rank),
            "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(rank), "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world_size)}


def _run(ctx: WorkerContext, command: Command, cwd: str, env: dict[str, str], run_as: RunAs, flag: str,
         ckpts: CommandCheckpoints) -> int:
    """Start the user's process, stream its output into the job's log, return its exit code."""
    proc = subprocess.Popen(list(command.argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, preexec_fn=demote(run_as.uid))
    done = threading.Event()
    threading.Thread(target=_control, args=(ctx, proc, flag, done), daemon=True).start()
    watcher = threading.Thread(target=ckpts.watch, args=(done,), daemon=True)
    watcher.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        ctx.log(line)
    code = proc.wait()
    done.set()
    watcher.join()
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


class CommandCheckpoints:
    """One rank's checkpoint directory of a command and its uploads (see the module's doc)."""

    def __init__(self, ctx: WorkerContext, directory: str, mark: str, staging: str) -> None:
        self.ctx, self.dir, self.mark, self.staging = ctx, directory, mark, staging
        self.writer = CheckpointWriter(ctx.store, checkpoint_prefix(ctx.job), rank=ctx.rank,
                                       world_size=ctx.world_size, keep=CHECKPOINT_KEEP, log=ctx.log,
                                       attempt=ctx.attempt)
        self.restored = self.marked = -1
        self.seen = ""
        self.snapshot: dict[str, tuple[int, int, int]] = {}  # the directory as last restored or uploaded

    def restore(self) -> int | None:
        step = restore_checkpoint(self.ctx.store, checkpoint_prefix(self.ctx.job), self.dir, rank=self.ctx.rank,
                                  log=self.ctx.log)
        if step is not None:
            self.restored = step
            self.snapshot = {rel: fp for rel, _, _, fp in _regular_files(self.dir)}
        return step

    def watch(self, done: threading.Event) -> None:
        """Upload each step user code marks saved, until ``done`` (run on a thread)."""
        while not done.wait(CHECKPOINT_POLL_S):
            self.poll()

    def poll(self) -> None:
        step = _read_mark(self.mark)
        if step and step != self.seen:
            self.seen = step
            self.marked = max(self.marked, int(step))
            self.upload(int(step), ack=True)

    def upload(self, step: int, *, ack: bool) -> concurrent.futures.Future[None]:
        """Snapshot the directory into the staging area and upload it in the background."""
        folder = tempfile.mkdtemp(dir=self.staging)
        files, self.snapshot = _stage(self.dir, folder)
        future = self.writer.save(step, files)
        future.add_done_callback(lambda f: self._uploaded(f, step, folder, ack))
        return future

    def _uploaded(self, future: concurrent.futures.Future[None], step: int, folder: str, ack: bool) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        ok = not future.cancelled() and future.exception() is None
        if ack:  # (the upload at exit said so when it began; a failure is logged by the writer)
            if ok:
                self.ctx.log(f"pylon: checkpoint of step {step} uploaded")
            _write_nofollow(self.mark + ".done", str(step) if ok else f"!{step}")

    def finish(self) -> None:
        """After the process exits: a mark it left last, then what it left unmarked, then wait."""
        self.poll()
        try:
            self.writer.wait()
        except Exception:  # noqa: BLE001 - logged by the writer; the next upload may still succeed
            pass
        current = {rel: fp for rel, _, _, fp in _regular_files(self.dir)}
        if current and current != self.snapshot:
            step = max(self.marked, self.restored) + 1
            self.ctx.log(f"pylon: uploading the checkpoint directory left at exit as step {step}")
            self.writer.part_timeout_s = EXIT_PART_TIMEOUT_S
            self.upload(step, ack=False)
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - logged by the writer; the job's own exit code stands
            pass


def _regular_files(root: str) -> Iterator[tuple[str, str, int, tuple[int, int, int]]]:
    """(relative path, name, dir fd, (size, mtime_ns, inode)) of each regular file under
    ``root``, never following a link (``os.fwalk`` opens each directory without following)."""
    for dirpath, _, names, dirfd in os.fwalk(root):
        for name in names:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                yield rel, name, dirfd, (st.st_size, st.st_mtime_ns, st.st_ino)


def _stage(root: str, folder: str) -> tuple[dict[str, str], dict[str, tuple[int, int, int]]]:
    """Hard-link (else copy) the regular files under ``root`` into ``folder``: the upload reads
    the bytes of the marked step even while user code writes its next checkpoint. Returns the
    files to upload and the directory's fingerprint."""
    files, printed = {}, {}
    for rel, name, dirfd, fp in _regular_files(root):
        dst = os.path.join(folder, *rel.split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(name, dst, src_dir_fd=dirfd, follow_symlinks=False)  # a link swapped in stays a link
        except OSError:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
        files[rel], printed[rel] = dst, fp
    return files, printed


def _read_mark(mark: str) -> str:
    """The step user code wrote to the "checkpoint saved" mark: digits only, not through a link."""
    try:
        fd = os.open(mark, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd) as f:
        step = f.read(32).strip()
    return step if _STEP.fullmatch(step) else ""


def _write_nofollow(path: str, text: str) -> None:
    """Replace ``path`` in a directory user code owns without following a link it planted."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # the job removed or blocked its own mark: only its own wait is affected
