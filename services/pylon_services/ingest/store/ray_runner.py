"""Runs ingest operations on Ray: fans a processing operation out as one task per file, folds
task progress into the operation, and publishes the version only when every task succeeded.

Crash safety: an operation is run only by the holder of its Redis lease, renewed while it runs.
``reconcile`` (at start and every lease period) adopts active operations whose lease lapsed, i.e.
whose runner died, and runs them again (``next_attempt`` fails them after too many tries).
Ray tasks of a dead runner die with its driver; the rerun writes the same keys again and
``find_published`` stops it from publishing a second version if the first run got that far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any

import ray

from pylon_services.common import blobs, deadline
from pylon_services.common.errors import InvalidArgument, PylonError
from pylon_services.ingest import chunked, processing
from pylon_services.ingest.domain import operations as ops_mod
from pylon_services.ingest.domain import versions
from pylon_services.ingest.domain.datasets import Datasets
from pylon_services.ingest.domain.operations import Operation
from pylon_services.ingest.store.redis_state import RedisState
from pylon_services.runtime import ray_connect
from pylon_services.storage.base import ObjectExists, ObjectStore

log = logging.getLogger("pylon.ingest.runner")
_POLL_S = 0.5


def _cause(err: BaseException) -> BaseException:
    """The exception a Ray task raised (Ray wraps it)."""
    return getattr(err, "cause", None) or err


class RayRunner:
    """Owns the Ray connection and the asyncio tasks running operations in this process."""

    def __init__(self, state: RedisState, store: ObjectStore, conn: dict[str, Any], redis_url: str, *,
                 ray_address: str, node_ip: str = "", lease_s: float = 15.0, task_cpus: float = 1.0,
                 chunk_bytes: int = 64 << 20, chunk_min_cpus: float = 4, connect_timeout_s: float = 180.0) -> None:
        self.state, self.store, self.conn, self.redis_url = state, store, conn, redis_url
        self.ray_address, self.node_ip, self.lease_s, self.task_cpus = ray_address, node_ip, lease_s, task_cpus
        self.chunk_bytes, self.chunk_min_cpus = chunk_bytes, chunk_min_cpus
        self.connect_timeout_s = connect_timeout_s
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self._reconciler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._connect)
        self._reconciler = asyncio.create_task(self._reconcile_loop())

    def _connect(self) -> None:
        ray_connect.connect(self.ray_address, "pylon", self.node_ip, self.connect_timeout_s)
        self._process = ray.remote(processing.process_file).options(num_cpus=self.task_cpus, max_retries=1)
        self._tokenize = ray.remote(processing.tokenize_version).options(num_cpus=self.task_cpus, max_retries=1)
        self._dedupe = ray.remote(processing.dedupe_across_files).options(num_cpus=self.task_cpus, max_retries=1)
        self._plan = ray.remote(chunked.plan_file).options(num_cpus=self.task_cpus, max_retries=1)
        self._chunk = ray.remote(chunked.process_chunk).options(num_cpus=self.task_cpus, max_retries=1)
        self._hash = ray.remote(chunked.hash_file).options(num_cpus=self.task_cpus, max_retries=1)
        # The merge mostly waits for chunks; reserving no CPU lets it run beside them (its own
        # work, copying and hashing the cleaned output, is a fraction of a chunk's).
        self._merge = ray.remote(merge_when_ready).options(num_cpus=0, max_retries=1)

    async def stop(self) -> None:
        """Stop running (the leases lapse and another replica, or our restart, adopts the ops)."""
        if self._reconciler:
            self._reconciler.cancel()
        for t in list(self._running.values()):
            t.cancel()

    def submit(self, op: Operation) -> None:
        """Start running ``op`` in the background if this process can take its lease."""
        if op.id not in self._running:
            self._running[op.id] = asyncio.create_task(self._run(op.id))

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                for op_id in await self.state.active_ids():
                    self.submit(Operation(id=op_id, tenant="", kind="process", target="", spec={}))
            except Exception:  # noqa: BLE001 - keep reconciling through Redis blips
                log.warning("reconcile failed", exc_info=True)
            await asyncio.sleep(self.lease_s / 2)

    async def _run(self, op_id: str) -> None:
        deadline.detach()  # started by a call (a commit, an upload), it outlives that call
        try:
            if not await self.state.acquire_lease(op_id, self.owner, self.lease_s):
                return
            keeper = asyncio.create_task(self._keep_lease(op_id))
            try:
                await self._run_leased(op_id)
            finally:
                keeper.cancel()
                await self.state.release_lease(op_id, self.owner)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug must not kill the loop; the op stays active
            log.exception("running operation failed", extra={"operation": op_id})
        finally:
            self._running.pop(op_id, None)

    async def _keep_lease(self, op_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.state.renew_lease(op_id, self.owner, self.lease_s)

    async def _run_leased(self, op_id: str) -> None:
        op = await self.state.get(op_id)
        if op is None or op.done:
            return
        if not ops_mod.next_attempt(op):
            await self.state.save(op)
            return
        await self.state.save(op)
        try:
            if op.kind == "process":
                await self._process_op(op)
            else:
                await self._tokenize_op(op)
        except PylonError as e:
            op.fail(e.code_name, e.message)
        except Exception as e:  # noqa: BLE001 - report, never leave the op hanging
            cause = _cause(e)
            if isinstance(cause, PylonError):
                op.fail(cause.code_name, cause.message)
            else:
                log.exception("operation failed", extra={"operation": op.id})
                op.fail("INTERNAL", f"{type(cause).__name__}: {cause}")
        if op.state == ops_mod.FAILED and op.kind == "process":
            await asyncio.to_thread(self._cleanup_failed, op)
        await self.state.save(op)
        await self.state.clear_progress(op.id)

    async def _wait(self, op: Operation, refs: list[Any], totals: int) -> list[Any]:
        """Await Ray tasks, folding their progress into the operation as they run."""
        futures = [asyncio.wrap_future(r.future()) for r in refs]
        pending = set(futures)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=_POLL_S)
            prog = await self.state.progress(op.id)
            done = sum(int(v.get("done", 0)) for v in prog.values() if isinstance(v, dict))
            if totals:
                new = min(0.99, done / totals)
                if abs(new - op.progress) >= 0.01:
                    op.progress = new
                    op.metadata.update({"stage": "processing", "bytes_done": done, "bytes_total": totals,
                                        "files_done": len(futures) - len(pending)})
                    await self.state.save(op)
        return [f.result() for f in futures]

    async def _process_op(self, op: Operation) -> None:
        spec = op.spec
        tenant, dataset = op.tenant, spec["dataset"]
        published = await asyncio.to_thread(versions.find_published, self.store, tenant, dataset, op.id)
        if published:
            op.succeed(published["name"], {"stage": "published", "version": published["version"]})
            return
        out_prefix = versions.work_prefix(tenant, dataset, op.id)
        files = spec["files"]
        across = len(files) > 1 and bool(spec["processing"]["recipe"].get("dedupe"))
        # Reuse needs a file's result to stand alone: single-file versions (uploads) only.
        keys = [versions.reuse_key(tenant, f["digest"], f, spec["processing"])
                if versions.reusable(f) and len(files) == 1 else None for f in files]
        known = await asyncio.to_thread(self._known_results, keys)
        todo = {i: {**files[i], "tenant": tenant, "dedupe_across": across} for i in range(len(keys)) if i not in known}
        fresh = await self._process_files(op, todo, out_prefix)
        if across:
            op.metadata["stage"] = "dedupe across files"
            await self.state.save(op)
            (fresh,) = await self._wait(op, [self._dedupe.remote(self.conn, fresh, out_prefix)], 0)
        results = sorted([*fresh, *known.values()], key=lambda r: r["index"])
        op.metadata["files_reused"] = len(known)
        from pylon_services.ingest.domain.pipeline import Summary, check_reject_rate, merge_summaries

        merged = merge_summaries([Summary.from_dict(r["summary"]) for r in results])
        counts = {"records_in": merged.records_in, "records_out": merged.records_out, "rejected": merged.rejected}
        op.metadata.update(counts)
        too_many = check_reject_rate(merged, float(spec["processing"]["max_reject_rate"]))
        if too_many:
            raise InvalidArgument.field("data", too_many + _first_rejects(self.store, results))
        # The dataset's record appears with its first version, never for a failed upload.
        await asyncio.to_thread(Datasets(self.store).ensure_dataset, tenant, dataset, spec.get("description", ""),
                                spec.get("creator", ""))
        doc_for = versions.build_manifest(tenant, dataset, op.to_dict(), results, merged.to_dict())
        n, doc = await asyncio.to_thread(versions.publish, self.store, tenant, dataset, doc_for,
                                         int(spec.get("version") or 0))
        op.succeed(doc["name"], {"stage": "published", "version": n, "digest": doc["digest"], **counts})
        await asyncio.to_thread(self._remember_results, tenant, spec, fresh)

    async def _process_files(self, op: Operation, todo: dict[int, dict[str, Any]], out_prefix: str) -> list[Any]:
        """Process files in parallel, large splittable ones as several chunks each (planned by a
        task; chunks, a hash and a merge that consumes the chunks in order as they finish, all
        at once); returns one result per file."""
        pspec = op.spec["processing"]
        # Chunking costs ~1.5x the CPU work (the merge passes over the output again): it pays
        # only where more cores than one are free (benchmarks/ingest_chunks.py, docs/design/ingest.md).
        cpus = await asyncio.to_thread(lambda: float(ray.cluster_resources().get("CPU", 0)))
        candidates = [i for i, f in todo.items()
                      if int(f.get("size", 0)) > self.chunk_bytes and cpus >= self.chunk_min_cpus]
        plans = dict(zip(candidates, await self._wait(op, [self._plan.remote(self.conn, todo[i], pspec, self.chunk_bytes)
                                                           for i in candidates], 0), strict=True))
        plans = {i: p for i, p in plans.items() if len(p["parts"]) > 1}
        refs, what = [], []
        for i, f in todo.items():
            if i not in plans:
                refs.append(self._process.remote(self.conn, self.redis_url, op.id, i, f, pspec, out_prefix))
                what.append(("file", i))
                continue
            chunk_refs = [self._chunk.remote(self.conn, self.redis_url, op.id, i, f, pspec, plans[i]["schema"],
                                             out_prefix, part) for part in plans[i]["parts"]]
            hash_ref = self._hash.remote(self.conn, i, f)
            # refs nested in lists reach the merge unresolved: it takes each chunk as it finishes
            refs += [*chunk_refs, hash_ref, self._merge.remote(self.conn, i, f, chunk_refs, [hash_ref], out_prefix)]
            what += [("chunk", i)] * len(chunk_refs) + [("hash", i), ("merged", i)]
        if plans:
            op.metadata["chunks"] = sum(len(p["parts"]) for p in plans.values())
        got = await self._wait(op, refs, sum(int(f.get("size", 0)) for f in todo.values()))
        return await self._redo_unsplit(op, todo, out_prefix, what, got)

    async def _redo_unsplit(self, op: Operation, todo: dict[int, dict[str, Any]], out_prefix: str,
                            what: list[tuple[str, int]], got: list[Any]) -> list[Any]:
        """The per-file results; a chunked CSV file whose merge stopped because a record spanned
        lines (a cut could have split it; see ``domain/chunks``) is processed again whole."""
        results = [r for (kind, _), r in zip(what, got, strict=True) if kind in ("file", "merged")]
        unsplit = {r["index"] for r in results if r.get("unsplit")}
        if not unsplit:
            return sorted(results, key=lambda r: r["index"])
        chunk_results = [r for (kind, i), r in zip(what, got, strict=True) if kind == "chunk" and i in unsplit]
        await asyncio.to_thread(chunked.delete_chunk_outputs, self.store, chunk_results)
        op.metadata["files_unsplit"] = len(unsplit)
        op.metadata["stage"] = "processing files again as one chunk"
        await self.state.save(op)
        again = await self._wait(op, [self._process.remote(self.conn, self.redis_url, op.id, i, todo[i],
                                                           op.spec["processing"], out_prefix) for i in unsplit], 0)
        return sorted([r for r in results if not r.get("unsplit")] + again, key=lambda r: r["index"])

    def _known_results(self, keys: list[str | None]) -> dict[int, dict[str, Any]]:
        """Results of earlier operations that processed the same verified bytes the same way:
        their cleaned outputs are immutable, so a re-upload need not process again."""
        out = {}
        for i, key in enumerate(keys):
            found = blobs.read_json_or_none(self.store, key) if key else None
            if found and all(self.store.exists(found[k]["key"]) for k in ("out", "rejects")):
                out[i] = {**found, "index": i}
        return out

    def _remember_results(self, tenant: str, spec: dict[str, Any], fresh: list[dict[str, Any]]) -> None:
        """Index the outputs by the now verified digest (referenced imports are not owned: skipped)."""
        for r in fresh:
            f = spec["files"][r["index"]]
            if not f.get("by_reference") and len(spec["files"]) == 1:
                self.store.put(versions.reuse_key(tenant, r["digest"], f, spec["processing"]), blobs.dump(r))

    def _cleanup_failed(self, op: Operation) -> None:
        """A failed processing op leaves nothing behind: its outputs and the uploaded staging bytes."""
        try:
            for o in list(self.store.iter_all(versions.work_prefix(op.tenant, op.spec["dataset"], op.id))):
                self.store.delete(o.key)
            for f in op.spec.get("files", []):
                if f.get("staging"):
                    self.store.delete(f["src_key"])
        except Exception:  # noqa: BLE001 - best effort; unreferenced objects are harmless
            log.warning("cleanup failed", extra={"operation": op.id}, exc_info=True)

    async def _tokenize_op(self, op: Operation) -> None:
        spec = op.spec
        ref = self._tokenize.remote(self.conn, self.redis_url, op.id, spec)
        op.metadata["stage"] = "tokenizing"
        await self.state.save(op)
        (res,) = await self._wait(op, [ref], 0)
        index = res["index"]
        doc = {"name": spec["tokenization_name"], "dataset_version": spec["version_name"],
               "dataset_digest": spec["version_digest"], "tokenizer": spec["tokenizer_name"],
               "tokenizer_digest": res["tokenizer_digest"], "tokenizer_object_key": res["tokenizer_key"],
               "index_object_key": res["index_key"], "shard_prefix": spec["shard_prefix"],
               "total_tokens": index["total_tokens"], "shard_count": len(index["shards"]),
               "vocab_size": index["vocab_size"], "dtype": index["dtype"], "operation": op.id,
               "create_time": time.time()}
        try:
            await asyncio.to_thread(self.store.put, spec["manifest_key"], blobs.dump(doc), if_none_match=True)
        except ObjectExists:
            pass  # a previous run of this op (or an identical request) published it
        op.succeed(spec["tokenization_name"], {"stage": "published", "total_tokens": index["total_tokens"],
                                               "shards": len(index["shards"]), "trained": res["trained"]})


def merge_when_ready(conn: dict[str, Any], index: int, f: dict[str, Any], chunk_refs: list[Any],
                     hash_ref: list[Any], out_prefix: str) -> dict[str, Any]:
    """Ray task: ``chunked.merge_chunks`` over chunk refs, each taken as soon as it is done."""
    return chunked.merge_chunks(conn, index, f, (ray.get(r) for r in chunk_refs), lambda: ray.get(hash_ref[0]),
                                out_prefix)


def _first_rejects(store: ObjectStore, results: list[dict[str, Any]], n: int = 3) -> str:
    """The first few rejects, so the failure message says what was wrong."""
    lines: list[str] = []
    for r in results:
        if len(lines) >= n or not r["rejects"]["size"]:
            continue
        head = store.get(r["rejects"]["key"], start=0, end=min(r["rejects"]["size"], 64 << 10))
        for raw in head.splitlines()[: n - len(lines)]:
            try:
                rec = json.loads(raw)
                lines.append(f"line {rec.get('line')}: {rec.get('reason')}")
            except ValueError:
                break
    return ("; first rejects: " + "; ".join(lines)) if lines else ""
