"""Datasets: create, delete, upload (direct to object storage, resumable; or streamed through
gRPC), import, list, get, preview, rejects, tokenize, and the operations that process them."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload

import google_crc32c
import grpc
from google.protobuf import json_format, struct_pb2

from pylon import transfer
from pylon.common.v1 import common_pb2
from pylon.errors import _BY_CODE, PylonError
from pylon.ingest.v1 import ingest_pb2
from pylon.paging import Paged
from pylon.resources._base import _FORMATS, CHUNK_BYTES, Progress, _name, _Resource, file_digest
from pylon.transfer import part_hashes
from pylon.types import Dataset, DatasetVersion, Operation, Reject, Tokenization

__all__ = ["Datasets", "part_hashes"]

DEFAULT_PART_SIZE = 16 << 20
DEFAULT_CONCURRENCY = 8
_COMPRESSIONS = {"": ingest_pb2.COMPRESSION_UNSPECIFIED, "none": ingest_pb2.COMPRESSION_NONE,
                 "gzip": ingest_pb2.COMPRESSION_GZIP, "zstd": ingest_pb2.COMPRESSION_ZSTD}
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _send_parts(path: str, part_size: int, urls: dict[int, str], concurrency: int,
                progress: Callable[[int], None] | None) -> dict[int, str]:
    """PUT the parts in parallel through ``pylon.transfer`` (keep-alive connections, 1 MiB
    socket writes, one retry per part), hashing each as it is sent; part number -> hex MD5."""
    return transfer.upload_parts_md5(path, part_size, urls, concurrency=concurrency, progress=progress)


def _processing(schema: dict[str, Any] | None, recipe: dict[str, Any] | None,
                max_reject_rate: float | None) -> ingest_pb2.ProcessingOptions:
    p = ingest_pb2.ProcessingOptions()
    if schema:
        p.schema.update(schema)
    if recipe:
        json_format.ParseDict(recipe, p.recipe)
    if max_reject_rate is not None:
        p.max_reject_rate = max_reject_rate
    return p


def _fmt(path: str, format: str | None) -> Any:
    if format is None:
        return ingest_pb2.DATA_FORMAT_UNSPECIFIED  # the service detects it from the file name
    if format not in _FORMATS:
        raise PylonError(f"unknown format {format!r}; pass one of {sorted(_FORMATS)}")
    return _FORMATS[format]


def raise_if_failed(op: Operation) -> Operation:
    """Raise the error a failed operation carries as the matching PylonError."""
    if op.failed:
        code = _CODES.get(op.error_code, grpc.StatusCode.UNKNOWN)
        raise _BY_CODE.get(code, PylonError)(f"{op.name}: {op.error_message}")
    return op


class Datasets(_Resource):
    # -- uploads ----------------------------------------------------------------------------------
    @overload
    def upload(self, path: str, name: str, *, format: str | None = None, compression: str = "",
               description: str = "", request_id: str | None = None, progress: Progress | None = None,
               direct: bool | None = None, resume: bool = True, part_size: int = DEFAULT_PART_SIZE,
               concurrency: int = DEFAULT_CONCURRENCY, schema: dict[str, Any] | None = None,
               recipe: dict[str, Any] | None = None, max_reject_rate: float | None = None,
               wait: Literal[True] = True, on_operation: Callable[[Operation], None] | None = None) -> DatasetVersion: ...

    @overload
    def upload(self, path: str, name: str, *, format: str | None = None, compression: str = "",
               description: str = "", request_id: str | None = None, progress: Progress | None = None,
               direct: bool | None = None, resume: bool = True, part_size: int = DEFAULT_PART_SIZE,
               concurrency: int = DEFAULT_CONCURRENCY, schema: dict[str, Any] | None = None,
               recipe: dict[str, Any] | None = None, max_reject_rate: float | None = None,
               wait: Literal[False], on_operation: Callable[[Operation], None] | None = None) -> Operation: ...

    @overload
    def upload(self, path: str, name: str, *, format: str | None = None, compression: str = "",
               description: str = "", request_id: str | None = None, progress: Progress | None = None,
               direct: bool | None = None, resume: bool = True, part_size: int = DEFAULT_PART_SIZE,
               concurrency: int = DEFAULT_CONCURRENCY, schema: dict[str, Any] | None = None,
               recipe: dict[str, Any] | None = None, max_reject_rate: float | None = None,
               wait: bool, on_operation: Callable[[Operation], None] | None = None) -> DatasetVersion | Operation: ...

    def upload(self, path: str, name: str, *, format: str | None = None, compression: str = "",
               description: str = "", request_id: str | None = None, progress: Progress | None = None,
               direct: bool | None = None, resume: bool = True, part_size: int = DEFAULT_PART_SIZE,
               concurrency: int = DEFAULT_CONCURRENCY, schema: dict[str, Any] | None = None,
               recipe: dict[str, Any] | None = None, max_reject_rate: float | None = None,
               wait: bool = True, on_operation: Callable[[Operation], None] | None = None) -> DatasetVersion | Operation:
        """Upload a file as a new version and wait until it is processed (``wait=False``: return
        the operation). Goes straight to object storage when the platform allows it (presigned
        multipart: parallel parts, resumable, nothing sent when the bytes are already held),
        else streams through gRPC. ``progress(bytes_done, bytes_total)``."""
        header = ingest_pb2.UploadHeader(dataset=_name("datasets", name), path=os.path.basename(path),
                                         format=_fmt(path, format), compression=_COMPRESSIONS[compression],
                                         size_bytes=os.path.getsize(path), description=description,
                                         request_id=request_id or os.urandom(8).hex(),
                                         processing=_processing(schema, recipe, max_reject_rate))
        if direct is False:
            return self._upload_streamed(path, header, progress)
        try:
            op, held = self._upload_direct(path, header, resume, part_size, concurrency, progress)
        except PylonError as e:
            if direct or e.code != grpc.StatusCode.FAILED_PRECONDITION or "presigned" not in e.message:
                raise
            return self._upload_streamed(path, header, progress)
        if not wait:
            return op
        op = raise_if_failed(self.wait(op.name, on_update=on_operation))
        version = self._version(op.result)
        version.deduplicated = held
        return version

    def _upload_direct(self, path: str, header: ingest_pb2.UploadHeader, resume: bool, part_size: int,
                       concurrency: int, progress: Progress | None) -> tuple[Operation, bool]:
        """Hash, open (or resume) a session, send the missing parts, commit; (operation, whether
        the platform already held the bytes)."""
        size = header.size_bytes
        moved = transfer.ProgressTotal(size, progress)

        identity = transfer.file_key(path, header.dataset, part_size)
        state_file = os.path.join(transfer.cache_dir("uploads"), identity)
        session = self._resumable(state_file) if resume else None
        if session is None:
            # Only the sha256 before asking (the service needs it to see whether it holds the
            # bytes already; cached per file identity); part MD5s are taken while sending.
            header.digest = transfer.hash_file(path).sha256
            req = ingest_pb2.CreateUploadSessionRequest(header=header, part_size_bytes=part_size)
            session = self._c.call(self._c.ingest.CreateUploadSession, req).session
            with open(state_file, "w") as f:
                f.write(session.name)
        md5s: builtins.list[str] = []
        if not session.already_stored:
            urls = {p.part_number: p.url for p in session.parts if not p.uploaded}
            moved(sum(min(part_size, size - (p.part_number - 1) * part_size) for p in session.parts if p.uploaded))
            sent = dict(_send_parts(path, part_size, urls, concurrency, moved))
            sent.update(transfer.part_md5s(path, part_size, [p.part_number for p in session.parts if p.uploaded]))
            md5s = [sent[n] for n in sorted(sent)]
            if transfer.file_key(path, header.dataset, part_size) != identity:
                raise PylonError(f"{path} changed while it was being uploaded; upload it again")
        else:
            moved(size)
        commit = ingest_pb2.CommitUploadSessionRequest(name=session.name, request_id=header.request_id,
                                                       part_md5s=md5s)
        op = Operation.from_proto(self._c.call(self._c.ingest.CommitUploadSession, commit).operation)
        os.unlink(state_file)
        return op, session.already_stored

    def _resumable(self, state_file: str) -> Any:
        """The open session an interrupted upload of this file left behind, with its parts."""
        if not os.path.exists(state_file):
            return None
        with open(state_file) as f:
            name = f.read().strip()
        try:
            s = self._c.call(self._c.ingest.GetUploadSession, ingest_pb2.GetUploadSessionRequest(name=name)).session
        except PylonError:
            return None
        return s if s.state == ingest_pb2.UPLOAD_SESSION_STATE_OPEN else None

    def _upload_streamed(self, path: str, header: ingest_pb2.UploadHeader, progress: Progress | None) -> DatasetVersion:
        """Stream through gRPC (CRC32C per chunk, SHA-256 checked before anything is stored)."""
        header.digest = header.digest or file_digest(path)
        size = header.size_bytes

        def messages() -> Iterator[ingest_pb2.UploadDatasetVersionRequest]:
            yield ingest_pb2.UploadDatasetVersionRequest(header=header)
            done = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield ingest_pb2.UploadDatasetVersionRequest(
                        chunk=ingest_pb2.UploadChunk(data=chunk, crc32c=google_crc32c.value(chunk)))
                    done += len(chunk)
                    if progress:
                        progress(done, size)

        resp = self._c.call(self._c.ingest.UploadDatasetVersion, messages(), timeout=3600)
        return DatasetVersion.from_proto(resp.version, resp.deduplicated)

    @overload
    def import_objects(self, uris: builtins.list[str], name: str, *, format: str | None = None,
                       compression: str = "", by_reference: bool = False, request_id: str | None = None,
                       wait: Literal[True] = True, **processing: Any) -> DatasetVersion: ...

    @overload
    def import_objects(self, uris: builtins.list[str], name: str, *, format: str | None = None,
                       compression: str = "", by_reference: bool = False, request_id: str | None = None,
                       wait: Literal[False], **processing: Any) -> Operation: ...

    @overload
    def import_objects(self, uris: builtins.list[str], name: str, *, format: str | None = None,
                       compression: str = "", by_reference: bool = False, request_id: str | None = None,
                       wait: bool, **processing: Any) -> DatasetVersion | Operation: ...

    def import_objects(self, uris: builtins.list[str], name: str, *, format: str | None = None,
                       compression: str = "", by_reference: bool = False, request_id: str | None = None,
                       wait: bool = True, **processing: Any) -> DatasetVersion | Operation:
        """Make a version from objects already in the platform's bucket (server-side copy, or
        referenced in place with ``by_reference``)."""
        req = ingest_pb2.ImportDatasetVersionRequest(
            dataset=_name("datasets", name), source_uris=uris,
            format=_fmt(uris[0] if uris else "", format), compression=_COMPRESSIONS[compression],
            by_reference=by_reference, request_id=request_id or os.urandom(8).hex(),
            processing=_processing(processing.get("schema"), processing.get("recipe"),
                                   processing.get("max_reject_rate")))
        op = Operation.from_proto(self._c.call(self._c.ingest.ImportDatasetVersion, req).operation)
        return self._version(raise_if_failed(self.wait(op.name)).result) if wait else op

    # -- datasets -----------------------------------------------------------------------------------
    def create(self, name: str, *, description: str = "", labels: dict[str, str] | None = None,
               request_id: str | None = None) -> Dataset:
        """Create an empty dataset (an upload also creates one with its first version). Raises
        AlreadyExistsError when the name is taken, also by a deleted dataset (names are not reused)."""
        parent, _, dataset_id = _name("datasets", name).rpartition("/datasets/")
        req = ingest_pb2.CreateDatasetRequest(
            parent=parent, dataset_id=dataset_id, description=description,
            labels=[common_pb2.Label(key=k, value=v) for k, v in (labels or {}).items()],
            request_id=request_id or os.urandom(8).hex())
        return Dataset.from_proto(self._c.call(self._c.ingest.CreateDataset, req).dataset)

    def delete(self, name: str, *, etag: str = "") -> None:
        """Soft-delete a dataset: it and its versions disappear from the API and it takes no new
        versions; stored data stays, so jobs and models that use a version keep working. With
        ``etag`` (from ``get``) only if unchanged since. Raises NotFoundError when already deleted,
        FailedPreconditionError while one of its uploads or tokenizations is running."""
        self._c.call(self._c.ingest.DeleteDataset, ingest_pb2.DeleteDatasetRequest(name=_name("datasets", name),
                                                                                    etag=etag))

    # -- reading ------------------------------------------------------------------------------------
    def list(self, *, page_size: int = 100, limit: int | None = None) -> Paged[Dataset]:
        """The tenant's datasets, fetched page by page as iteration reaches them."""
        def page(token: str, size: int) -> tuple[Sequence[Dataset], str]:
            resp = self._c.call(self._c.ingest.ListDatasets, ingest_pb2.ListDatasetsRequest(page_size=size,
                                                                                          page_token=token))
            return [Dataset.from_proto(d) for d in resp.datasets], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

    def versions(self, name: str, *, page_size: int = 50, limit: int | None = None) -> Paged[DatasetVersion]:
        """A dataset's versions, fetched page by page as iteration reaches them."""
        def page(token: str, size: int) -> tuple[Sequence[DatasetVersion], str]:
            req = ingest_pb2.ListDatasetVersionsRequest(parent=_name("datasets", name), page_size=size,
                                                        page_token=token)
            resp = self._c.call(self._c.ingest.ListDatasetVersions, req)
            return [DatasetVersion.from_proto(v) for v in resp.versions], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

    def get(self, name: str, version: str | int | None = None) -> Dataset | DatasetVersion:
        """The dataset, or one of its versions (a number or "latest")."""
        if version is None:
            return Dataset.from_proto(self._c.call(self._c.ingest.GetDataset,
                                                   ingest_pb2.GetDatasetRequest(name=_name("datasets", name))).dataset)
        return self._version(f"{_name('datasets', name)}/versions/{version}")

    def _version(self, full_name: str) -> DatasetVersion:
        req = ingest_pb2.GetDatasetVersionRequest(name=full_name)
        return DatasetVersion.from_proto(self._c.call(self._c.ingest.GetDatasetVersion, req).version)

    def preview(self, name: str, version: str | int = "latest", limit: int = 10) -> builtins.list[Any]:
        """The first cleaned records of a version, as the JSON values they are (text lines are
        strings, JSONL/CSV/Parquet rows objects)."""
        req = ingest_pb2.PreviewDatasetVersionRequest(name=f"{_name('datasets', name)}/versions/{version}",
                                                      limit=limit)
        values = self._c.call(self._c.ingest.PreviewDatasetVersion, req).records
        return [json_format.MessageToDict(v) if isinstance(v, struct_pb2.Value) else v for v in values]

    def rejects(self, name: str, version: str | int = "latest", *, page_size: int = 500,
                limit: int | None = None) -> Paged[Reject]:
        """The records validation rejected (file, line, reason, truncated raw text), fetched page
        by page as iteration reaches them."""
        full = f"{_name('datasets', name)}/versions/{version}"

        def page(token: str, size: int) -> tuple[Sequence[Reject], str]:
            req = ingest_pb2.ListRejectsRequest(name=full, page_size=size, page_token=token)
            resp = self._c.call(self._c.ingest.ListRejects, req)
            return [Reject.from_proto(r) for r in resp.rejects], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

    # -- tokenization -------------------------------------------------------------------------------
    @overload
    def tokenize(self, name: str, version: str | int = "latest", *, tokenizer: str = "", vocab_size: int = 0,
                 shard_tokens: int = 0, request_id: str | None = None, wait: Literal[True] = True,
                 on_operation: Callable[[Operation], None] | None = None) -> Tokenization: ...

    @overload
    def tokenize(self, name: str, version: str | int = "latest", *, tokenizer: str = "", vocab_size: int = 0,
                 shard_tokens: int = 0, request_id: str | None = None, wait: Literal[False],
                 on_operation: Callable[[Operation], None] | None = None) -> Operation: ...

    @overload
    def tokenize(self, name: str, version: str | int = "latest", *, tokenizer: str = "", vocab_size: int = 0,
                 shard_tokens: int = 0, request_id: str | None = None, wait: bool,
                 on_operation: Callable[[Operation], None] | None = None) -> Tokenization | Operation: ...

    def tokenize(self, name: str, version: str | int = "latest", *, tokenizer: str = "", vocab_size: int = 0,
                 shard_tokens: int = 0, request_id: str | None = None, wait: bool = True,
                 on_operation: Callable[[Operation], None] | None = None) -> Tokenization | Operation:
        """Train (or reuse the stored ``tokenizer``) and write token shards; returns the
        Tokenization (``wait=False``: the operation)."""
        req = ingest_pb2.TokenizeDatasetVersionRequest(
            name=f"{_name('datasets', name)}/versions/{version}", tokenizer=tokenizer, vocab_size=vocab_size,
            shard_tokens=shard_tokens, request_id=request_id or os.urandom(8).hex())
        op = Operation.from_proto(self._c.call(self._c.ingest.TokenizeDatasetVersion, req).operation)
        if not wait:
            return op
        op = raise_if_failed(self.wait(op.name, on_update=on_operation))
        resp = self._c.call(self._c.ingest.GetTokenization, ingest_pb2.GetTokenizationRequest(name=op.result))
        return Tokenization.from_proto(resp.tokenization)

    # -- operations ---------------------------------------------------------------------------------
    def operation(self, name: str) -> Operation:
        resp = self._c.call(self._c.ingest.GetOperation, ingest_pb2.GetOperationRequest(name=name))
        return Operation.from_proto(resp.operation)

    def watch(self, name: str, timeout: float | None = None) -> Iterator[Operation]:
        """The operation each time it changes, until done."""
        for resp in self._c.stream(self._c.ingest.WatchOperation, ingest_pb2.WatchOperationRequest(name=name),
                                   timeout=timeout):
            yield Operation.from_proto(resp.operation)

    def wait(self, name: str, timeout: float | None = None,
             on_update: Callable[[Operation], None] | None = None) -> Operation:
        """Block until the operation is done (following its Watch stream); returns it."""
        last = None
        for last in self.watch(name, timeout):
            if on_update:
                on_update(last)
        return last if last is not None and last.done else self.operation(name)
