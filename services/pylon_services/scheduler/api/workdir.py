"""UploadWorkingDir: a job's working directory as a tar.gz, streamed in, checked, and stored once
per content digest under ``tenants/{t}/workdirs/`` (a mixin of the servicer)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator

import grpc

from pylon.scheduler.v1 import scheduler_pb2 as pb
from pylon_services.common.errors import InvalidArgument, ResourceExhausted
from pylon_services.runtime.context import principal
from pylon_services.scheduler.api import inputs
from pylon_services.storage.base import ObjectStore

MAX_WORKDIR_BYTES = 256 * 1024 * 1024


def workdir_prefix(tenant: str) -> str:
    return f"tenants/{tenant}/workdirs/"


def _check_archive(path: str) -> None:
    """A readable gzip tar whose members stay inside the directory they unpack into."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar.getmembers():
                if m.name.startswith("/") or ".." in m.name.split("/") or m.issym() or m.islnk():
                    raise InvalidArgument.field("chunk", f"archive member {m.name[:200]!r} is a link or leaves the "
                                                           f"directory")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InvalidArgument.field("chunk", f"not a tar.gz archive: {str(e)[:200]}") from None


class WorkdirUploads:
    _store: ObjectStore

    async def UploadWorkingDir(self, request_iterator: AsyncIterator[pb.UploadWorkingDirRequest],
                               context: grpc.aio.ServicerContext) -> pb.UploadWorkingDirResponse:
        tenant, size, digest = None, 0, hashlib.sha256()
        fd, path = tempfile.mkstemp(prefix="pylon-workdir-", suffix=".tar.gz")
        try:
            with os.fdopen(fd, "wb") as f:
                async for req in request_iterator:
                    if tenant is None:
                        tenant = inputs.parent("parent", req.parent, principal())
                    size += len(req.chunk)
                    if size > MAX_WORKDIR_BYTES:
                        raise ResourceExhausted(f"working directory archive is over {MAX_WORKDIR_BYTES >> 20} MiB")
                    digest.update(req.chunk)
                    f.write(req.chunk)
            if tenant is None or size == 0:
                raise InvalidArgument.field("chunk", "the archive is empty")
            await asyncio.to_thread(_check_archive, path)
            key = f"{workdir_prefix(tenant)}sha256-{digest.hexdigest()}.tar.gz"
            if not await asyncio.to_thread(self._store.exists, key):
                await asyncio.to_thread(self._store.put_file, key, path)
            return pb.UploadWorkingDirResponse(working_dir_key=key, size_bytes=size)
        finally:
            os.unlink(path)
