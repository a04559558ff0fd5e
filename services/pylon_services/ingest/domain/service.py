"""Ingest use cases: upload sessions, streamed uploads, imports, tokenization, operations.

Transport-free: the servicer parses names and converts protos, this module decides. Work that
reads the data runs as an operation (``OperationRunner.submit``, on Ray), never here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pylon_services.common import blobs, deadline, layout, paging
from pylon_services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from pylon_services.common.limits import MAX_NAME, check_description, check_etag, check_request_id, check_text, quote
from pylon_services.common.names import check_id
from pylon_services.ingest.domain import uploads, versions
from pylon_services.ingest.domain.checks import (
    check_file,
    check_header,
    check_object_key,
    check_sources,
    check_version_number,
    processing_options,
)
from pylon_services.ingest.domain.datasets import Datasets
from pylon_services.ingest.domain.operations import Operation, OperationStore, check_visible, new_operation
from pylon_services.ingest.domain.uploads import UploadSession
from pylon_services.storage.base import ObjectStore


class StateStore(OperationStore, Protocol):
    async def put_session(self, s: UploadSession) -> None: ...
    async def get_session(self, session_id: str) -> UploadSession | None: ...
    async def claim_commit(self, session_id: str, request_id: str) -> str | None: ...
    async def release_commit(self, session_id: str) -> None: ...
    def watch(self, op_id: str) -> AsyncIterator[Operation | None]: ...


class OperationRunner(Protocol):
    def submit(self, op: Operation) -> None: ...


class Ingest:
    """The service's use cases over the object store, the state store and the runner."""

    def __init__(self, store: ObjectStore, state: StateStore, runner: OperationRunner,
                 default_part_size: int = uploads.DEFAULT_PART) -> None:
        self.store, self.state, self.runner = store, state, runner
        self.datasets = Datasets(store)
        self.default_part_size = default_part_size

    # -- operations -------------------------------------------------------------------------------
    async def start(self, op: Operation, request_key: str = "") -> Operation:
        op = await self.state.create(op, request_key)
        if not op.done:
            self.runner.submit(op)
        return op

    async def get_operation(self, tenant: str, op_id: str, admin: bool = False) -> Operation:
        return check_visible(await self.state.get(op_id), tenant, op_id, admin)

    async def watch(self, tenant: str, op_id: str, admin: bool = False) -> AsyncIterator[Operation]:
        """The operation now and after every change, until it is done. The state store shares
        one reader per operation among all its watchers (``StateStore.watch``): a watcher costs
        no Redis call of its own, not even the first read (NOT_FOUND comes from the shared one)."""
        last: Any = None
        async for found in self.state.watch(op_id):
            op = check_visible(found, tenant, op_id, admin)
            snapshot = (op.state, round(op.progress, 3), json.dumps(op.metadata, sort_keys=True))
            if snapshot != last:
                last = snapshot
                yield op
            if op.done:
                return

    async def wait(self, op: Operation) -> Operation:
        async for latest in self.watch(op.tenant, op.id):
            op = latest
        return op

    def process_op(self, tenant: str, dataset: str, files: list[dict[str, Any]], processing: dict[str, Any], *,
                   source: str, creator: str, description: str = "", version: int = 0) -> Operation:
        spec = {"dataset": dataset, "files": files, "processing": processing, "source": source,
                "creator": creator, "description": description, "version": version}
        return new_operation(tenant, "process", f"tenants/{tenant}/datasets/{dataset}", spec)

    # -- datasets ---------------------------------------------------------------------------------
    async def create_dataset(self, tenant: str, creator: str, dataset: str, description: str,
                             labels: dict[str, str], request_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.datasets.create_dataset, tenant, dataset, description, labels, creator,
                                       request_id)

    async def delete_dataset(self, tenant: str, dataset: str, etag: str) -> None:
        """Soft delete (``Datasets.delete_dataset``); refused while an operation writes to the
        dataset (an upload being processed, a tokenization): it would publish into a deleted one."""
        check_etag("etag", etag)
        await asyncio.to_thread(self.datasets.get_dataset, tenant, dataset)
        target = f"tenants/{tenant}/datasets/{dataset}"
        for op_id in await self.state.active_ids():
            op = await self.state.get(op_id)
            if op is not None and not op.done and (op.target == target or op.target.startswith(target + "/")):
                raise FailedPrecondition(f"{target} has a running operation ({op.name}, {op.kind}); wait for it "
                                         "or let it fail, then delete")
        await asyncio.to_thread(self.datasets.delete_dataset, tenant, dataset, etag)

    # -- upload sessions --------------------------------------------------------------------------
    async def create_session(self, tenant: str, creator: str, dataset: str, header: dict[str, Any],
                             part_size: int, part_md5s: list[str]) -> tuple[UploadSession, dict[int, str]]:
        check_id("header.dataset", dataset)
        check_header("header", header)
        await asyncio.to_thread(self.datasets.check_writable, tenant, dataset)
        part_size = uploads.check_plan(header["size"], header["digest"], part_size or self.default_part_size,
                                       part_md5s)
        processing = processing_options(header.get("processing") or {})
        sid = "up" + uuid.uuid4().hex[:22]
        held = await asyncio.to_thread(self.store.exists, blobs.blob_key(tenant, header["digest"]))
        staging = f"tenants/{tenant}/uploads/{sid}/{header['path']}"
        upload_id = "" if held else await asyncio.to_thread(self.store.create_multipart, staging)
        if not held and await asyncio.to_thread(self.store.presign, "GET", staging) is None:
            await asyncio.to_thread(self.store.abort_multipart, staging, upload_id)
            raise FailedPrecondition("this platform's object store has no presigned URLs; "
                                     "upload through UploadDatasetVersion (gRPC streaming) instead")
        s = UploadSession(id=sid, tenant=tenant, dataset=dataset, path=header["path"], format=header["format"],
                          compression=header["compression"], digest=header["digest"], size=header["size"],
                          part_size=part_size, part_md5s=list(part_md5s), staging_key=staging, upload_id=upload_id,
                          already_stored=held, processing=processing, description=header.get("description", ""),
                          creator=creator)
        await self.state.put_session(s)
        return s, await asyncio.to_thread(self._part_urls, s, set())

    def _part_urls(self, s: UploadSession, stored: set[int]) -> dict[int, str]:
        if s.already_stored or s.state != uploads.OPEN:
            return {}
        return {n: str(self.store.presign("PUT", s.staging_key, upload_id=s.upload_id, part_number=n))
                for n in range(1, s.part_count + 1) if n not in stored}

    async def session(self, tenant: str, sid: str) -> UploadSession:
        s = await self.state.get_session(sid)
        if s is None or s.tenant != tenant:
            raise NotFound(f"tenants/{tenant}/uploadSessions/{sid} not found (or expired)")
        return s

    async def get_session(self, tenant: str, sid: str) -> tuple[UploadSession, dict[int, str], dict[int, str]]:
        """The session, the ETags of the parts the store holds, and URLs for the missing ones."""
        s = await self.session(tenant, sid)
        stored: dict[int, str] = {}
        if s.upload_id and s.state == uploads.OPEN:
            parts = await asyncio.to_thread(self.store.list_parts, s.staging_key, s.upload_id)
            stored = {p.part_number: p.etag for p in parts}
        return s, stored, await asyncio.to_thread(self._part_urls, s, set(stored))

    async def commit_session(self, tenant: str, sid: str, request_id: str, version: int,
                             part_md5s: list[str] | None = None) -> Operation:
        """Verify the parts, complete the upload, and start processing. Exactly one commit wins.
        ``part_md5s``: the parts' MD5s when the session was opened without them."""
        s = await self.session(tenant, sid)
        if s.state == uploads.OPEN and not s.already_stored:
            uploads.commit_md5s(s, list(part_md5s or []))
        await asyncio.to_thread(self.datasets.check_writable, tenant, s.dataset)
        request_id = check_request_id("request_id", request_id) or uuid.uuid4().hex
        if version:
            latest = await asyncio.to_thread(blobs.latest_number, self.store,
                                             layout.dataset_versions_prefix(tenant, s.dataset))
            check_version_number(version, latest)
        if version and await asyncio.to_thread(versions.version_exists, self.store, tenant, s.dataset, version):
            raise AlreadyExists(f"tenants/{tenant}/datasets/{s.dataset}/versions/{version} already exists")
        winner = await self.state.claim_commit(sid, request_id)
        if winner is not None:
            if winner == request_id and s.operation:
                return await self.get_operation(tenant, s.operation)
            raise AlreadyExists(f"{s.name} was already committed by another request") if s.state != uploads.ABORTED \
                else FailedPrecondition(f"{s.name} was aborted")
        try:
            await asyncio.to_thread(self._complete, s)
        except BaseException:
            await self.state.release_commit(sid)  # fixable (e.g. re-send a part): allow another commit
            raise
        f = {"path": s.path, "format": s.format, "compression": s.compression, "digest": s.digest, "size": s.size,
             "src_key": blobs.blob_key(tenant, s.digest) if s.already_stored else s.staging_key,
             "staging": not s.already_stored}
        op = self.process_op(tenant, s.dataset, [f], s.processing, source="upload:presigned", creator=s.creator,
                             description=s.description, version=version)
        s.state, s.operation = uploads.COMMITTED, op.id
        op = await self.start(op, f"{tenant}:commit:{sid}")
        await self.state.put_session(s)
        return op

    def _complete(self, s: UploadSession) -> None:
        if s.already_stored:
            return
        parts = uploads.check_parts(s, self.store.list_parts(s.staging_key, s.upload_id))
        info = self.store.complete_multipart(s.staging_key, s.upload_id, parts)
        try:
            uploads.check_size(s, info.size)
        except InvalidArgument:
            self.store.delete(s.staging_key)
            raise

    async def abort_session(self, tenant: str, sid: str) -> None:
        s = await self.session(tenant, sid)
        if s.state == uploads.COMMITTED:
            raise FailedPrecondition(f"{s.name} is committed; it can no longer be aborted")
        if await self.state.claim_commit(sid, "abort:" + sid) not in (None, "abort:" + sid):
            raise FailedPrecondition(f"{s.name} is being committed")
        if s.upload_id:
            await asyncio.to_thread(self.store.abort_multipart, s.staging_key, s.upload_id)
        s.state = uploads.ABORTED
        await self.state.put_session(s)

    # -- streamed uploads and imports ---------------------------------------------------------------
    async def upload_streamed(self, tenant: str, creator: str, dataset: str, header: dict[str, Any],
                              spool_path: str, digest: str, size: int) -> tuple[Operation, bool]:
        """Store spooled bytes content-addressed (digest already verified) and process them;
        waits for the operation. Returns it and whether the bytes were already held."""
        check_id("header.dataset", dataset)
        check_header("header", header)
        await asyncio.to_thread(self.datasets.check_writable, tenant, dataset)
        key = blobs.blob_key(tenant, digest)
        held = await asyncio.to_thread(self.store.exists, key)
        if not held:
            await asyncio.to_thread(self.store.put_file, key, spool_path)
        f = {"path": header["path"], "format": header["format"], "compression": header["compression"],
             "digest": digest, "size": size, "src_key": key, "staging": False}
        op = self.process_op(tenant, dataset, [f], header["processing"], source="upload:grpc", creator=creator,
                             description=header.get("description", ""))
        request_key = f"{tenant}:stream:{dataset}:{header['request_id']}" if header.get("request_id") else ""
        return await self.wait(await self.start(op, request_key)), held

    def _import_key(self, tenant: str, index: int, uri: str) -> str:
        """The store key an import URI names; only the platform's bucket, only the caller's area."""
        key = uri
        field = f"source_uris[{index}]"
        if uri.startswith("s3://"):
            bucket, _, rest = uri[5:].partition("/")
            prefix = getattr(self.store, "prefix", "")
            if bucket != getattr(self.store, "bucket", None) or not rest.startswith(prefix):
                raise PermissionDenied(f"source_uris[{index}]: ingest can import only from its own bucket "
                                       f"s3://{getattr(self.store, 'bucket', '?')}/{prefix}")
            key = rest[len(prefix):]
        elif "://" in uri:
            raise InvalidArgument.field(field, "must be s3://bucket/key or an object key")
        check_object_key(field, key)
        if not key.startswith(f"tenants/{tenant}/"):
            raise PermissionDenied(f"{field}: {quote(uri)} is outside tenants/{tenant}/")
        return key

    async def import_objects(self, tenant: str, creator: str, dataset: str, uris: list[str], fmt: str,
                             compression: str, by_reference: bool, processing: dict[str, Any], request_id: str,
                             description: str = "") -> Operation:
        """Process objects already in the store into a version (copied server-side to their content
        address, or referenced in place)."""
        check_id("dataset", dataset)
        check_sources(uris)
        check_request_id("request_id", request_id)
        check_description("description", description)
        await asyncio.to_thread(self.datasets.check_writable, tenant, dataset)
        files = []
        for i, uri in enumerate(uris):
            deadline.check("checking the import's sources")
            key = self._import_key(tenant, i, uri)
            name = key.rsplit("/", 1)[-1]
            check_file(f"source_uris[{i}]", name, fmt, compression)
            try:
                info = await asyncio.to_thread(self.store.head, key)
            except NotFound:
                raise NotFound(f"source_uris[{i}]: {quote(uri)} does not exist") from None
            files.append({"path": name, "format": fmt, "compression": compression, "digest": "", "size": info.size,
                          "src_key": key, "staging": False, "by_reference": by_reference})
        if len({f["path"] for f in files}) != len(files):
            raise InvalidArgument.field("source_uris", "file names must be distinct within a version")
        op = self.process_op(tenant, dataset, files, processing_options(processing),
                             source="import:" + ",".join(uris)[:500], creator=creator, description=description)
        return await self.start(op, f"{tenant}:import:{request_id}" if request_id else "")

    # -- reading versions ---------------------------------------------------------------------------
    async def version(self, tenant: str, dataset: str, version: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.datasets.visible_version, tenant, dataset, version)

    def _jsonl_page(self, files: list[dict[str, Any]], at: tuple[int, int], limit: int
                    ) -> tuple[list[tuple[int, bytes]], tuple[int, int] | None]:
        """Up to ``limit`` lines across ``files`` from position ``at`` (file index, byte offset);
        the position after them, or None at the end. Reads at most ``limit`` lines in 4 MiB
        ranges and stops at the call's deadline."""
        fi, off = at
        out: list[tuple[int, bytes]] = []
        while fi < len(files) and len(out) < limit:
            deadline.check("reading records")
            f = files[fi]
            if off >= f["size_bytes"]:
                fi, off = fi + 1, 0
                continue
            data = self.store.get(f["object_key"], start=off, end=min(f["size_bytes"], off + (4 << 20)))
            lines = data.split(b"\n")
            complete = lines if off + len(data) >= f["size_bytes"] else lines[:-1]
            if not complete:
                raise FailedPrecondition(f"a record of {f['path']} is longer than 4 MiB")
            for line in complete:
                off += len(line) + 1
                if line.strip():
                    out.append((fi, line))
                if len(out) >= limit:
                    break
        more = fi < len(files) and not (fi == len(files) - 1 and off >= files[fi]["size_bytes"])
        return out, ((fi, off) if more else None)

    async def preview(self, tenant: str, dataset: str, version: str, limit: int) -> list[Any]:
        """The first ``limit`` cleaned records of a version."""
        doc = await self.version(tenant, dataset, version)
        if "processed_files" not in doc:
            raise FailedPrecondition(f"{doc['name']} predates processing: it has no cleaned records")
        lines, _ = await asyncio.to_thread(self._jsonl_page, doc["processed_files"], (0, 0),
                                           max(1, min(limit or 10, 1000)))
        return [json.loads(line) for _, line in lines]

    async def rejects(self, tenant: str, dataset: str, version: str, page_size: int, token: str
                      ) -> tuple[list[dict[str, Any]], str]:
        """Rejected records with file, line and reason, a page at a time. The token holds a
        position (file index, offset of a line start) inside this version's reject files."""
        doc = await self.version(tenant, dataset, version)
        files = doc.get("reject_files", [])
        at = _reject_position(token, doc["name"], files)
        lines, nxt = await asyncio.to_thread(self._jsonl_page, files, at, page_size)
        out = []
        for fi, line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                if token:  # a forged token can point into the middle of a line
                    raise InvalidArgument.field("page_token", "does not point at a record") from None
                raise
            out.append({"path": doc["files"][fi]["path"], "line": int(rec.get("line", 0)),
                        "reason": str(rec.get("reason", "")), "raw": str(rec.get("raw", ""))})
        return out, (paging.encode_token("rejects", f"{nxt[0]}:{nxt[1]}", doc["name"]) if nxt else "")

    # -- tokenization ---------------------------------------------------------------------------------
    async def tokenize(self, tenant: str, creator: str, dataset: str, version: str, tokenizer: str,
                       vocab_size: int, shard_tokens: int, request_id: str) -> Operation:
        check_text("tokenizer", tokenizer, MAX_NAME)
        check_request_id("request_id", request_id)
        doc = await self.version(tenant, dataset, version)
        if "processed_files" not in doc:
            raise FailedPrecondition(f"{doc['name']} predates processing: upload it again to tokenize it")
        tok_id = tokenizer.rsplit("/", 1)[-1] if tokenizer else f"{dataset}-v{doc['version']}"
        if tokenizer.startswith("tenants/") and not tokenizer.startswith(f"tenants/{tenant}/tokenizers/"):
            raise NotFound(f"{tokenizer} not found")
        check_id("tokenizer", tok_id)
        vocab_size = vocab_size or 8192
        if not 256 < vocab_size <= 1 << 20:
            raise InvalidArgument.field("vocab_size", "must be between 257 and 1048576")
        shard_tokens = shard_tokens or 1 << 20
        if not 1024 <= shard_tokens <= 1 << 30:
            raise InvalidArgument.field("shard_tokens", "must be between 1024 and 2^30")
        n = doc["version"]
        name = f"{doc['name']}/tokenizations/{tok_id}"
        spec = {"keys": [f["object_key"] for f in doc["processed_files"]], "vocab_size": vocab_size,
                "shard_tokens": shard_tokens, "tokenizer_key": f"tenants/{tenant}/tokenizers/{tok_id}.json",
                "tokenizer_name": f"tenants/{tenant}/tokenizers/{tok_id}", "tokenization_name": name,
                "version_name": doc["name"], "version_digest": doc["digest"], "creator": creator,
                "manifest_key": layout.tokenization_key(tenant, dataset, n, tok_id),
                "shard_prefix": versions.shards_prefix(tenant, dataset, n, tok_id)}
        op = new_operation(tenant, "tokenize", doc["name"], spec)
        return await self.start(op, f"{tenant}:tokenize:{request_id}" if request_id else "")

    async def tokenization(self, tenant: str, dataset: str, version: str, tok_id: str) -> dict[str, Any]:
        doc = await self.version(tenant, dataset, version)  # NOT_FOUND once the dataset is deleted
        return await asyncio.to_thread(layout.read_tokenization, self.store, tenant, dataset, doc["version"], tok_id)


def _reject_position(token: str, scope: str, files: list[dict[str, Any]]) -> tuple[int, int]:
    """(file index, offset) a ListRejects token names, checked against the version's files."""
    position = paging.decode_str_token(token, "rejects", scope)
    if position is None:
        return 0, 0
    fi_text, _, off_text = position.partition(":")
    if not (fi_text.isascii() and fi_text.isdigit() and off_text.isascii() and off_text.isdigit()
            and len(fi_text) <= 6 and len(off_text) <= 15):
        raise InvalidArgument.field("page_token", "is not a page token this server issued for this list")
    fi, off = int(fi_text), int(off_text)
    if fi >= len(files) or off > files[fi]["size_bytes"]:
        raise InvalidArgument.field("page_token", "is not a page token this server issued for this list")
    return fi, off
