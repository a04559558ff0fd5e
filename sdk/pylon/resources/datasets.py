"""Datasets: upload, list, get."""

from __future__ import annotations

import os
from collections.abc import Iterator

import google_crc32c

from pylon.errors import PylonError
from pylon.ingest.v1 import ingest_pb2
from pylon.resources._base import _FORMATS, CHUNK_BYTES, Progress, _name, _Resource, file_digest
from pylon.types import Dataset, DatasetVersion


class Datasets(_Resource):
    def upload(self, path: str, name: str, *, format: str | None = None, description: str = "",
               request_id: str | None = None, progress: Progress | None = None) -> DatasetVersion:
        """Stream a file to ingest (CRC32C per chunk, SHA-256 checked at commit) as a new version."""
        fmt = format or os.path.splitext(path)[1].lstrip(".").lower() or "text"
        if fmt not in _FORMATS:
            raise PylonError(f"unknown format {fmt!r}; pass format= one of {sorted(_FORMATS)}")
        size = os.path.getsize(path)
        header = ingest_pb2.UploadHeader(dataset=_name("datasets", name), path=os.path.basename(path),
                                         format=_FORMATS[fmt], digest=file_digest(path), size_bytes=size,
                                         description=description, request_id=request_id or os.urandom(8).hex())

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

    def list(self, page_size: int = 100) -> list[Dataset]:
        resp = self._c.call(self._c.ingest.ListDatasets, ingest_pb2.ListDatasetsRequest(page_size=page_size))
        return [Dataset.from_proto(d) for d in resp.datasets]

    def get(self, name: str, version: str | int | None = None) -> Dataset | DatasetVersion:
        """The dataset, or one of its versions (a number or "latest")."""
        if version is None:
            return Dataset.from_proto(self._c.call(self._c.ingest.GetDataset,
                                                   ingest_pb2.GetDatasetRequest(name=_name("datasets", name))).dataset)
        req = ingest_pb2.GetDatasetVersionRequest(name=f"{_name('datasets', name)}/versions/{version}")
        return DatasetVersion.from_proto(self._c.call(self._c.ingest.GetDatasetVersion, req).version)


