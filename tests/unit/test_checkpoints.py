"""Whole-or-nothing checkpoints on a real (local-directory) object store: a checkpoint is visible
only once every rank's part and rank 0's manifest are in, the newest K are kept, a corrupt or
truncated one is skipped for the one before it, saves upload in the background with bounded
back-pressure, and files given as paths are streamed from disk."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pylon_services.storage.local import LocalObjectStore
from pylon_services.workloads.checkpoints import (
    CheckpointWriter,
    SkippedCheckpoint,
    checkpoint_steps,
    file_key,
    latest_checkpoint,
    restore_checkpoint,
    step_dir,
)

PREFIX = "tenants/acme/jobs/j1/checkpoint/"


class SlowStore:
    """The real local store with puts delayed until released (to observe background uploads)."""

    def __init__(self, inner: LocalObjectStore, delay_s: float = 0.0) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.puts = 0

    def _slow(self) -> None:
        self.gate.wait(30)
        time.sleep(self.delay_s)
        self.puts += 1

    def put(self, key: str, data: bytes, **kw: Any) -> Any:
        self._slow()
        return self.inner.put(key, data, **kw)

    def put_file(self, key: str, path: str, **kw: Any) -> Any:
        self._slow()
        return self.inner.put_file(key, path, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(str(tmp_path / "objects"))


def _writer(store: Any, rank: int = 0, world: int = 1, **kw: Any) -> CheckpointWriter:
    return CheckpointWriter(store, PREFIX, rank=rank, world_size=world, **kw)


def test_a_single_rank_save_is_visible_and_round_trips(store):
    w = _writer(store)
    w.save(10, {"model.bin": b"m10", "sub/state.json": b"{}"}, meta={"loss": 1.5}).result(10)
    w.close()
    assert checkpoint_steps(store, PREFIX) == [10]
    assert latest_checkpoint(store, PREFIX, rank=0) == (10, {"model.bin": b"m10", "sub/state.json": b"{}"})
    manifest = json.loads(store.get(step_dir(PREFIX, 10) + "manifest.json"))
    assert manifest["step"] == 10 and manifest["world_size"] == 1 and manifest["meta"] == {"loss": 1.5}
    part = json.loads(store.get(step_dir(PREFIX, 10) + "rank-0.json"))
    assert part["files"]["model.bin"] == {"size": 3, "sha256": hashlib.sha256(b"m10").hexdigest()}


def test_no_manifest_means_invisible(store):
    w = _writer(store)
    w.save(10, {"a": b"1"}).result(10)
    store.delete(step_dir(PREFIX, 10) + "manifest.json")
    assert checkpoint_steps(store, PREFIX) == [] and latest_checkpoint(store, PREFIX, rank=0) is None
    w.close()


def test_rank_zero_publishes_only_after_every_rank_and_a_missing_rank_keeps_it_invisible(store):
    r0 = _writer(store, 0, 2, part_timeout_s=1.0)
    f = r0.save(5, {"model": b"weights", "rng": b"r0"})
    with pytest.raises(TimeoutError, match="rank\\(s\\) 1 did not upload"):
        f.result(10)
    assert checkpoint_steps(store, PREFIX) == []
    with pytest.raises(TimeoutError):
        r0.wait()  # the upload error is re-raised once
    r0.wait()
    # Both ranks this time: rank 1 saves late, rank 0 waits for it, then publishes.
    r0.part_timeout_s = 20.0
    f0 = r0.save(6, {"model": b"w6", "rng": b"r0-6"})
    time.sleep(0.3)
    assert not f0.done() and checkpoint_steps(store, PREFIX) == []
    r1 = _writer(store, 1, 2)
    r1.save(6, {"rng": b"r1-6"}).result(10)
    f0.result(10)
    assert checkpoint_steps(store, PREFIX) == [6]
    assert latest_checkpoint(store, PREFIX, rank=1) == (6, {"rng": b"r1-6"})
    assert latest_checkpoint(store, PREFIX, rank=0) == (6, {"model": b"w6", "rng": b"r0-6"})
    r0.close()
    r1.close()
    # The incomplete step 5 is older than the newest whole one: pruned.
    assert not any(o.key.startswith(step_dir(PREFIX, 5)) for o in store.iter_all(PREFIX))


def test_a_step_another_rank_skipped_is_given_up_at_once_and_the_next_one_publishes(store):
    """A rank whose saves were coalesced went from step 10 straight to 20: rank 0 stops waiting
    for its part of 10 (it would hold rank 0's uploads for the whole timeout) and publishes 20."""
    r1 = _writer(store, 1, 2)
    r1.save(20, {"rng": b"r1-20"}).result(10)
    r0 = _writer(store, 0, 2, part_timeout_s=60.0)
    start = time.monotonic()
    with pytest.raises(SkippedCheckpoint, match="step 10: rank\\(s\\) 1 went on to a later step"):
        r0.save(10, {"model": b"w10"}).result(30)
    assert time.monotonic() - start < 10
    r0.save(20, {"model": b"w20"}).result(30)
    assert checkpoint_steps(store, PREFIX) == [20]
    assert latest_checkpoint(store, PREFIX, rank=0) == (20, {"model": b"w20"})
    with pytest.raises(SkippedCheckpoint):
        r0.close()  # the skipped step's error is re-raised once
    r1.close()


def test_keeps_the_newest_k_whole_checkpoints(store):
    w = _writer(store, keep=2)
    for step in (10, 20, 30, 40):
        w.save(step, {"m": str(step).encode()})
    w.close()
    assert checkpoint_steps(store, PREFIX) == [40, 30]
    assert {o.key.split("/")[5] for o in store.iter_all(PREFIX)} == {"step-000000000030", "step-000000000040"}


@pytest.mark.parametrize("damage, why", [("corrupt", "sha256 mismatch"), ("truncate", "bytes, not"),
                                         ("delete", "missing")])
def test_a_damaged_checkpoint_is_skipped_with_a_log_line_and_the_previous_used(store, tmp_path, damage, why):
    w = _writer(store)
    w.save(10, {"m": b"ten-ten"}).result(10)
    w.save(20, {"m": b"twenty!"}).result(10)
    w.close()
    key = file_key(PREFIX, 20, 0, "m")
    if damage == "corrupt":
        store.put(key, b"twenty?")  # same size, other bytes
    elif damage == "truncate":
        store.put(key, b"twe")
    else:
        store.delete(key)
    lines: list[str] = []
    assert latest_checkpoint(store, PREFIX, rank=0, log=lines.append) == (10, {"m": b"ten-ten"})
    assert len(lines) == 1 and lines[0].startswith("checkpoint of step 20 is corrupt (file m")
    assert why in lines[0] and lines[0].endswith("; using step 10")
    out = tmp_path / "restored"
    assert restore_checkpoint(store, PREFIX, str(out), rank=0) == 10
    assert (out / "m").read_bytes() == b"ten-ten"


def test_a_truncated_file_of_another_rank_is_caught_too(store):
    for step in (1, 2):
        r1 = _writer(store, 1, 2)
        r1.save(step, {"rng": b"r1-state"}).result(10)
        r1.close()
        r0 = _writer(store, 0, 2)
        r0.save(step, {"m": b"model"}).result(10)
        r0.close()
    store.put(file_key(PREFIX, 2, 1, "rng"), b"r1")
    lines: list[str] = []
    assert latest_checkpoint(store, PREFIX, rank=0, log=lines.append) == (1, {"m": b"model"})
    assert "file rng of rank 1" in lines[0]


def test_save_returns_at_once_and_uploads_in_the_background(store):
    slow = SlowStore(store)
    slow.gate.clear()
    w = _writer(slow)
    t0 = time.monotonic()
    f = w.save(1, {"m": b"x" * 1000})
    assert time.monotonic() - t0 < 0.5 and not f.done()
    assert checkpoint_steps(store, PREFIX) == []
    slow.gate.set()
    f.result(10)
    w.wait()
    assert checkpoint_steps(store, PREFIX) == [1]
    w.close()


def test_max_pending_blocks_save_until_one_finishes_and_drops_nothing(store):
    slow = SlowStore(store)
    slow.gate.clear()
    w = _writer(slow, max_pending=1, keep=10)
    w.save(1, {"m": b"1"})
    started = threading.Event()
    returned = threading.Event()

    def second() -> None:
        started.set()
        w.save(2, {"m": b"2"})
        returned.set()

    threading.Thread(target=second, daemon=True).start()
    started.wait(5)
    assert not returned.wait(0.5)  # blocked behind the first save
    slow.gate.set()
    assert returned.wait(10)
    w.close()
    assert checkpoint_steps(store, PREFIX) == [2, 1]


def test_path_files_are_streamed_from_disk_and_links_are_skipped(store, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * (3 << 20))
    (tmp_path / "link").symlink_to(big)
    lines: list[str] = []
    w = _writer(store, log=lines.append)
    w.save(7, {"big.bin": big, "shard/other": str(big), "link": tmp_path / "link"}).result(10)
    w.close()
    step, files = latest_checkpoint(store, PREFIX, rank=0)  # type: ignore[misc]
    assert step == 7 and sorted(files) == ["big.bin", "shard/other"] and files["big.bin"] == big.read_bytes()
    assert any("link skipped" in line for line in lines)
    with pytest.raises(FileNotFoundError):
        w2 = _writer(store)
        w2.save(8, {"gone": tmp_path / "nope"}).result(10)


def test_bad_names_are_refused(store):
    w = _writer(store)
    for name in ("", "/abs", "a/../b", "a//b"):
        with pytest.raises(ValueError):
            w.save(1, {name: b"x"})
    w.close()


def test_parts_an_earlier_attempt_left_neither_complete_a_step_nor_mark_a_rank_as_gone_on(store):
    """Attempt 1 left rank 1's parts of steps 20 and 30 (its rank 0 never published them).
    Attempt 2 resumes earlier: its step 20 waits for attempt 2's rank 1, and the stale step 30
    does not make rank 0 give step 20 up."""
    old = _writer(store, 1, 2, attempt=1)
    old.save(20, {"rng": b"old-20"}).result(10)
    old.save(30, {"rng": b"old-30"}).result(10)
    old.close()
    r0 = _writer(store, 0, 2, attempt=2, part_timeout_s=30.0)
    f0 = r0.save(20, {"model": b"new-20"})
    time.sleep(1.0)
    assert not f0.done() and checkpoint_steps(store, PREFIX) == []
    r1 = _writer(store, 1, 2, attempt=2)
    r1.save(20, {"rng": b"new-20"}).result(10)
    f0.result(10)
    assert checkpoint_steps(store, PREFIX) == [20]
    assert latest_checkpoint(store, PREFIX, rank=1) == (20, {"rng": b"new-20"})
    r0.close()
    r1.close()
