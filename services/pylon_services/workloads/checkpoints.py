"""Whole-or-nothing checkpoints of a gang of workers in the object store, uploaded in the background.

Layout under a job's checkpoint prefix (``tenants/{t}/jobs/{id}/checkpoint/``)::

    step-000000000120/rank-0/<files...>   each rank's own files
    step-000000000120/rank-1/<files...>
    step-000000000120/rank-<r>.json       a rank's part manifest, written after its files:
                                          {"step", "rank", "attempt", "files": {name: {"size", "sha256"}}}
    step-000000000120/manifest.json       written LAST by rank 0, once every rank's part manifest
                                          exists: {"step", "world_size", "time", "ranks", "meta"}

A checkpoint is visible only once ``manifest.json`` exists, so a crash at any point of a save
never makes a partial checkpoint the latest; it is valid when every file its part manifests list
has its size and sha256, so a corrupt or truncated one is skipped and the one before it is used.
Each rank writes only under its own ``rank-<r>/``, so ranks never coordinate except through the
store: rank 0 polls for the part manifests of its own attempt (a part an earlier attempt left at
the same step holds other state), and gives a step up at once when a missing rank has already
uploaded a part of a later step in this attempt (ranks upload in step order, so it never will: a
command's ranks can coalesce saves differently, see ``scheduler/worker/command.py``). Each rank
checks its own files when it loads, so a rank whose part is damaged falls back alone; a trainer
that must resume every rank at one step agrees on the smallest step its ranks found (an
all-reduce MIN). The module is torch-free: trainers hand it bytes or
paths of files they wrote themselves.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pylon_services.storage.base import ObjectNotFound, ObjectStore

MANIFEST = "manifest.json"
PART_POLL_S = (0.05, 1.0)  # rank 0's poll for the other ranks' parts: first and longest interval
_HASH_CHUNK = 1 << 20
_STEP_DIR = re.compile(r"step-([0-9]{12})/")

FileSource = bytes | str | os.PathLike[str]


def _noop(_: str) -> None:
    pass


def step_dir(prefix: str, step: int) -> str:
    """The folder of ``step``'s checkpoint (ends with "/")."""
    return f"{_dir(prefix)}step-{step:012d}/"


def _dir(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


def part_key(prefix: str, step: int, rank: int) -> str:
    return f"{step_dir(prefix, step)}rank-{rank}.json"


def file_key(prefix: str, step: int, rank: int, name: str) -> str:
    return f"{step_dir(prefix, step)}rank-{rank}/{name}"


def _check_name(name: str) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or "" in parts or ".." in parts or "." in parts:
        raise ValueError(f"checkpoint file name {name!r} must be a relative path without '.' or '..' parts")


# --- what is in the store ---------------------------------------------------------------------


def _scan(store: ObjectStore, prefix: str) -> dict[int, bool]:
    """Every step with objects under ``prefix``, and whether its manifest exists (one listing)."""
    base, steps = _dir(prefix), dict[int, bool]()
    for info in store.iter_all(base + "step-"):
        m = _STEP_DIR.match(info.key, len(base))
        if m is None:
            continue
        step = int(m.group(1))
        steps[step] = steps.get(step, False) or info.key == f"{base}{m.group(0)}{MANIFEST}"
    return steps


def checkpoint_steps(store: ObjectStore, prefix: str) -> list[int]:
    """The steps of the checkpoints whose manifest exists (whole ones), newest first."""
    return sorted((s for s, whole in _scan(store, prefix).items() if whole), reverse=True)


def _read_json(store: ObjectStore, key: str) -> dict[str, Any]:
    doc = json.loads(store.get(key))
    if not isinstance(doc, dict):
        raise ValueError(f"{key.rsplit('/', 1)[-1]} is not a JSON object")
    return doc


def _part_files(store: ObjectStore, prefix: str, step: int, rank: int) -> dict[str, dict[str, Any]]:
    """The files rank ``rank``'s part manifest of ``step`` lists; raises when it is missing or bad."""
    try:
        part = _read_json(store, part_key(prefix, step, rank))
    except ObjectNotFound:
        raise ValueError(f"rank {rank}'s part manifest is missing") from None
    files = part.get("files")
    if part.get("step") != step or part.get("rank") != rank or not isinstance(files, dict):
        raise ValueError(f"rank {rank}'s part manifest does not describe step {step}")
    return files


def _check_checkpoint(store: ObjectStore, prefix: str, step: int, rank: int) -> dict[str, dict[str, Any]]:
    """This rank's listed files of a whole checkpoint, after checking the manifest names this rank
    and every rank's part manifest and file sizes are there (cheap: HEADs, no reads)."""
    manifest = _read_json(store, step_dir(prefix, step) + MANIFEST)
    world = int(manifest.get("world_size", 0))
    if manifest.get("step") != step or not 0 <= rank < world:
        raise ValueError(f"its manifest has no part for rank {rank} (world size {world})")
    mine: dict[str, dict[str, Any]] = {}
    for r in range(world):
        files = _part_files(store, prefix, step, r)
        for name, info in files.items():
            try:
                size = store.head(file_key(prefix, step, r, name)).size
            except ObjectNotFound:
                raise ValueError(f"file {name} of rank {r}: missing") from None
            if size != int(info["size"]):
                raise ValueError(f"file {name} of rank {r}: {size} bytes, not {info['size']}")
        if r == rank:
            mine = files
    return mine


def _find(store: ObjectStore, prefix: str, rank: int, log: Callable[[str], None],
          fetch: Callable[[int, dict[str, dict[str, Any]]], Any], at_most: int | None = None
          ) -> tuple[int, Any] | None:
    """The newest whole checkpoint (of a step <= ``at_most``, when given) ``fetch`` accepts (it
    raises ValueError on a bad file), with one log line per newer one skipped, naming the step
    used instead."""
    skipped: list[tuple[int, str]] = []
    found: tuple[int, Any] | None = None
    for step in checkpoint_steps(store, prefix):
        if at_most is not None and step > at_most:
            continue
        try:
            found = step, fetch(step, _check_checkpoint(store, prefix, step, rank))
            break
        except (ValueError, KeyError, TypeError, ObjectNotFound) as e:
            skipped.append((step, str(e)))
    instead = f"using step {found[0]}" if found else "no earlier whole checkpoint"
    for step, why in skipped:
        log(f"checkpoint of step {step} is corrupt ({why}); {instead}")
    return found


def latest_checkpoint(store: ObjectStore, prefix: str, *, rank: int, log: Callable[[str], None] = _noop,
                      at_most: int | None = None) -> tuple[int, dict[str, bytes]] | None:
    """This rank's files of the newest whole, valid checkpoint under ``prefix`` (name -> bytes),
    or None when there is none. A corrupt or truncated checkpoint is skipped with a log line.
    ``at_most`` ignores newer steps (a gang that agreed on an older one)."""
    def fetch(step: int, files: dict[str, dict[str, Any]]) -> dict[str, bytes]:
        out = {}
        for name, info in files.items():
            data = store.get(file_key(prefix, step, rank, name))
            _verify(name, len(data), hashlib.sha256(data).hexdigest(), info)
            out[name] = data
        return out

    return _find(store, prefix, rank, log, fetch, at_most)


def restore_checkpoint(store: ObjectStore, prefix: str, directory: str, *, rank: int,
                       log: Callable[[str], None] = _noop) -> int | None:
    """Like ``latest_checkpoint`` but streams this rank's files into ``directory`` (for files too
    large to hold in memory); returns the step restored, or None. A checkpoint that fails its
    check leaves no file of its own behind."""
    def fetch(step: int, files: dict[str, dict[str, Any]]) -> None:
        written = []
        try:
            for name, info in files.items():
                path = os.path.join(directory, *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                store.get_file(file_key(prefix, step, rank, name), path)
                written.append(path)
                with open(path, "rb") as f:
                    size, digest = _hash_stream(f)
                _verify(name, size, digest, info)
        except BaseException:
            for path in written:
                os.unlink(path)
            raise

    found = _find(store, prefix, rank, log, fetch)
    return None if found is None else found[0]


def _verify(name: str, size: int, digest: str, info: Mapping[str, Any]) -> None:
    if size != int(info["size"]):
        raise ValueError(f"file {name}: {size} bytes, not {info['size']}")
    if digest != info["sha256"]:
        raise ValueError(f"file {name}: sha256 mismatch")


def _hash_stream(f: Any) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    while chunk := f.read(_HASH_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def delete_checkpoint(store: ObjectStore, prefix: str, step: int) -> None:
    """Remove one checkpoint, its manifest first, so a half-deleted one is never visible."""
    folder = step_dir(prefix, step)
    store.delete(folder + MANIFEST)
    for info in list(store.iter_all(folder)):
        store.delete(info.key)


def prune(store: ObjectStore, prefix: str, keep: int) -> list[int]:
    """Delete whole checkpoints beyond the newest ``keep``, and incomplete ones older than the
    newest whole one (a save that never finished; newer incomplete ones may still be uploading).
    Returns the steps deleted."""
    steps = _scan(store, prefix)
    whole = sorted((s for s, w in steps.items() if w), reverse=True)
    if not whole:
        return []
    doomed = whole[max(keep, 1):] + [s for s, w in steps.items() if not w and s < whole[0]]
    for step in sorted(doomed):
        delete_checkpoint(store, prefix, step)
    return sorted(doomed)


# --- the writer -------------------------------------------------------------------------------


class CheckpointWriter:
    """One rank's background checkpoint uploads (see the module's doc).

    ``save`` returns at once; one background thread uploads each save's files, then this rank's
    part manifest; on rank 0 it then waits (up to ``part_timeout_s``) for every rank's part
    manifest, writes ``manifest.json`` and prunes to the newest ``keep``. At most ``max_pending``
    saves wait or upload at a time: a further ``save`` blocks until one finishes, so memory stays
    bounded and no checkpoint is dropped.

    Files are bytes, or paths of local files that the upload thread streams from disk: the
    caller must not change or remove such a file until the save's future is done (write the next
    checkpoint to new files, or ``wait()`` first). A path that is a symlink or not a regular file
    is skipped with a log line (opened without following links).
    """

    def __init__(self, store: ObjectStore, prefix: str, *, rank: int, world_size: int, keep: int = 3,
                 log: Callable[[str], None] = _noop, max_pending: int = 1, part_timeout_s: float = 600.0,
                 attempt: int = 0) -> None:
        if not 0 <= rank < world_size or max_pending < 1:
            raise ValueError("need 0 <= rank < world_size and max_pending >= 1")
        self.store, self.prefix, self.rank, self.world_size = store, _dir(prefix), rank, world_size
        self.keep, self.log, self.part_timeout_s, self.attempt = keep, log, part_timeout_s, attempt
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"pylon-ckpt-r{rank}")
        self._lock = threading.Lock()
        self._pending: list[concurrent.futures.Future[None]] = []
        self._errors: list[BaseException] = []

    def save(self, step: int, files: Mapping[str, FileSource], *, meta: Mapping[str, Any] | None = None
             ) -> concurrent.futures.Future[None]:
        """Queue a checkpoint of ``step`` and return its future (done once uploaded and, on rank 0,
        made visible); blocks only while ``max_pending`` saves are in flight."""
        if step < 0:
            raise ValueError("step must be >= 0")
        for name in files:
            _check_name(name)
        self._slots.acquire()
        try:
            future = self._pool.submit(self._upload, step, dict(files), dict(meta or {}))
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.append(future)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: concurrent.futures.Future[None]) -> None:
        self._slots.release()
        with self._lock:
            if future in self._pending:
                self._pending.remove(future)
            if not future.cancelled() and future.exception() is not None:
                self._errors.append(future.exception())  # type: ignore[arg-type]

    def wait(self, timeout: float | None = None) -> None:
        """Block until every save so far is done; re-raise the first upload error (once)."""
        with self._lock:
            pending = list(self._pending)
        done, not_done = concurrent.futures.wait(pending, timeout=timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} checkpoint save(s) still uploading after {timeout}s")
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Wait for pending saves (re-raising an upload error), then stop the upload thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    # -- the upload thread ---------------------------------------------------------------------

    def _upload(self, step: int, files: dict[str, FileSource], meta: dict[str, Any]) -> None:
        try:
            if self.rank == 0:
                self.store.delete(step_dir(self.prefix, step) + MANIFEST)  # a re-save is invisible until whole
            listed = {}
            for name, source in files.items():
                info = self._put(file_key(self.prefix, step, self.rank, name), source, name)
                if info is not None:
                    listed[name] = info
            part = {"step": step, "rank": self.rank, "attempt": self.attempt, "files": listed}
            self.store.put(part_key(self.prefix, step, self.rank), json.dumps(part).encode())
            if self.rank == 0:
                self._publish(step, meta)
        except BaseException as e:
            self.log(f"pylon: checkpoint of step {step} failed: {type(e).__name__}: {str(e)[:300]}")
            raise

    def _put(self, key: str, source: FileSource, name: str) -> dict[str, Any] | None:
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            self.store.put(key, data)
            return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        try:
            fd = os.open(os.fspath(source), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise
            self.log(f"pylon: checkpoint file {name} skipped: not a regular file")
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self.log(f"pylon: checkpoint file {name} skipped: not a regular file")
                return None
            size, digest = _hash_stream(f)
            # The same open file is uploaded (not the path again): a file renamed over the path
            # meanwhile cannot swap in other bytes or a link.
            proc = f"/proc/self/fd/{fd}"
            stored = self.store.put_file(key, proc if os.path.exists(proc) else os.fspath(source))
        if stored.size != size:
            raise ValueError(f"checkpoint file {name} changed while it was uploaded")
        return {"size": size, "sha256": digest}

    def _publish(self, step: int, meta: dict[str, Any]) -> None:
        """Rank 0: wait for every rank's part, write the manifest, prune old checkpoints."""
        missing, past = self._await_parts(step)
        if past:
            raise SkippedCheckpoint(f"checkpoint of step {step}: rank(s) {', '.join(map(str, past))} went on to a "
                                    "later step without uploading their part of it; it stays invisible")
        if missing:
            raise TimeoutError(f"checkpoint of step {step}: rank(s) {', '.join(map(str, missing))} did not "
                               f"upload their part within {self.part_timeout_s:g}s; it stays invisible")
        manifest = {"step": step, "world_size": self.world_size, "time": time.time(),
                    "ranks": list(range(self.world_size)), "meta": meta}
        self.store.put(step_dir(self.prefix, step) + MANIFEST, json.dumps(manifest).encode())
        pruned = prune(self.store, self.prefix, self.keep)
        if pruned:
            self.log(f"pylon: deleted older checkpoint(s) of step {', '.join(map(str, pruned))}")

    def _await_parts(self, step: int) -> tuple[list[int], list[int]]:
        """The ranks whose part of ``step`` is still missing at the deadline, and those of them
        (found at once) that already uploaded a part of a later step. Each rank uploads its saves
        in step order, so such a rank never will: a rank whose saves were coalesced (user code
        marked step 10, then 20, before the worker looked) skips steps the others kept, and
        waiting for it would hold this rank's uploads for the whole timeout."""
        deadline = time.monotonic() + self.part_timeout_s
        missing = list(range(1, self.world_size))
        for delay in _backoff():
            missing = [r for r in missing if not self._part_of_this_attempt(part_key(self.prefix, step, r))]
            if not missing or time.monotonic() >= deadline:
                return missing, []
            past = sorted(self._ranks_past(step, missing))
            if past:
                return missing, past
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        return missing, []

    def _part_of_this_attempt(self, key: str) -> bool:
        try:
            part = _read_json(self.store, key)
        except (ObjectNotFound, ValueError):
            return False
        return part.get("attempt", 0) == self.attempt

    def _ranks_past(self, step: int, among: list[int]) -> set[int]:
        """The ranks of ``among`` with a part manifest of this attempt at a step after ``step``
        (one listing; only their later parts are read)."""
        ranks = set[int]()
        for info in self.store.iter_all(self.prefix + "step-"):
            m = _PART.fullmatch(info.key, len(self.prefix))
            if m is None or int(m.group(1)) <= step or (rank := int(m.group(2))) not in among or rank in ranks:
                continue
            if self._part_of_this_attempt(info.key):
                ranks.add(rank)
        return ranks


class SkippedCheckpoint(RuntimeError):
    """A rank went on to a later checkpoint without saving this one: it can never be whole."""


_PART = re.compile(r"step-([0-9]{12})/rank-([0-9]+)\.json")


def _backoff() -> Iterator[float]:
    delay = PART_POLL_S[0]
    while True:
        yield delay
        delay = min(delay * 2, PART_POLL_S[1])
