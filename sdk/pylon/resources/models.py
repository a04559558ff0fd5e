"""Models: register (from local files or an object-store prefix), list, get, versions, aliases,
download (verified, resumable, cached by digest), archive, delete, lineage."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import google_crc32c

from pylon import transfer
from pylon.paging import Paged
from pylon.registry.v1 import registry_pb2 as pb
from pylon.resources._base import _name, _Resource
from pylon.types import Alias, AliasMove, Lineage, Model, ModelVersion

DEFAULT_PART_SIZE = 16 << 20  # like boto3, small enough that one file keeps every thread busy
# New files up to this size are hashed before they are sent (the registry's default limit for one
# PUT the object store verifies, PYLON_REGISTRY_VERIFIED_PUT_MAX_BYTES); larger ones while they are.
UPFRONT_HASH_MAX = 1 << 30
_HF_WEIGHTS = (".safetensors", ".bin")


class SymlinkError(ValueError):
    """A model directory holds a symlink that points outside it (see ``local_files``)."""


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def local_files(path: str | list[str], *, follow_symlinks: bool = False) -> dict[str, str]:
    """Relative path -> local path for a directory (recursively), one file, or a list of files.

    Symlinks in a directory are followed only where they stay inside it, unless
    ``follow_symlinks``: a link out of the directory (to ``/etc/hostname``, to a home
    directory) raises ``SymlinkError`` instead of uploading what it points at. Pass
    ``follow_symlinks=True`` for a Hugging Face cache snapshot, whose files are symlinks into
    the cache's ``blobs`` directory. Linked directories are descended into only with
    ``follow_symlinks`` (each real directory once, so a link cycle ends)."""
    if isinstance(path, list):
        return {os.path.basename(p): p for p in path}
    if os.path.isfile(path):
        return {os.path.basename(path): path}
    if not os.path.isdir(path):
        raise FileNotFoundError(path)
    root = os.path.realpath(path)
    out: dict[str, str] = {}
    seen: set[str] = set()
    for here, dirs, names in os.walk(path, followlinks=follow_symlinks):
        real_here = os.path.realpath(here)
        if real_here in seen:  # reached again through a link: already listed
            dirs[:] = []
            continue
        seen.add(real_here)
        for name in list(dirs) + names:
            full = os.path.join(here, name)
            if os.path.islink(full) and not follow_symlinks and not _inside(os.path.realpath(full), root):
                raise SymlinkError(f"{full} links to {os.path.realpath(full)}, outside {path}; pass "
                                   "follow_symlinks=True to upload what links point at (e.g. a Hugging Face "
                                   "cache snapshot)")
        for name in names:
            full = os.path.join(here, name)
            if os.path.isfile(full):  # a dangling link or a socket is not a file to upload
                out[os.path.relpath(full, path).replace(os.sep, "/")] = full
    if not out:
        raise FileNotFoundError(f"{path} holds no files")
    return out


def detect_format(files: dict[str, str]) -> str:
    """Guess the artifact format from file names (HF transformers: config.json + weights)."""
    names = set(files)
    if "config.json" in names and any(n.endswith(_HF_WEIGHTS) for n in names):
        return "hf_transformers"
    if any(n.endswith(".onnx") for n in names):
        return "onnx"
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    if any(n.endswith((".pt", ".pth")) for n in names):
        return "torch"
    return "other"


def format_label(name: str) -> str:
    """The ``ModelFormat`` label of a format name ("hf_transformers" -> "MODEL_FORMAT_HF_TRANSFORMERS");
    ValueError naming the known formats."""
    label = f"MODEL_FORMAT_{name.upper()}"
    if label not in pb.ModelFormat.keys():
        known = [n.removeprefix("MODEL_FORMAT_").lower() for n in pb.ModelFormat.keys()[1:]]  # not UNSPECIFIED
        raise ValueError(f"unknown model format {name!r}: one of {', '.join(known)}")
    return label


class Models(_Resource):
    # -- register ---------------------------------------------------------------------------
    def register(self, name: str, path: str | list[str] | None = None, *, source_uri: str = "",
                 format: str | None = None, metrics: dict[str, float] | None = None,
                 tags: dict[str, str] | None = None, description: str = "", config: dict[str, Any] | None = None,
                 job: str = "", datasets: list[str] | None = None, dataset_digests: list[str] | None = None,
                 base_model: str = "", request_id: str | None = None, part_size: int = DEFAULT_PART_SIZE,
                 concurrency: int = transfer.DEFAULT_CONCURRENCY,
                 progress: Callable[[int, int], None] | None = None,
                 follow_symlinks: bool = False) -> ModelVersion:
        """Register a new version from local files (``path``: a directory, a file or a list of
        files, uploaded straight to object storage in parallel) or from an object-store prefix the
        platform already holds (``source_uri``, e.g. a job's output: copied server-side).
        ``format`` defaults to what the local files look like (``detect_format``), and to
        ``hf_transformers`` (what the causal-lm trainer writes) for a ``source_uri``.
        ``progress(done_bytes, total_bytes)`` reports the upload. A directory's symlinks that
        point outside it are refused unless ``follow_symlinks`` (``local_files``)."""
        parent = _name("models", name)
        req = pb.CreateModelVersionRequest(
            parent=parent, metrics=metrics or {}, tags=tags or {}, description=description,
            request_id=request_id or os.urandom(8).hex(),
            lineage=pb.Lineage(job=job, datasets=datasets or [], dataset_digests=dataset_digests or [],
                               base_model=base_model))
        if config:
            req.config.update(config)
        files = local_files(path, follow_symlinks=follow_symlinks) if path is not None else {}
        label = format_label(format or (detect_format(files) if files else "hf_transformers"))  # before uploading
        req.MergeFrom(pb.CreateModelVersionRequest(format=label))
        if files:
            req.upload, declared = self._upload(parent, files, part_size, concurrency, progress)
            req.files.extend(declared)
        else:
            req.source_uri = source_uri
        return ModelVersion.from_proto(self._c.call(self._c.registry.CreateModelVersion, req).version)

    def _upload(self, parent: str, files: dict[str, str], part_size: int, concurrency: int,
                progress: Callable[[int, int], None] | None) -> tuple[str, list[pb.ArtifactFile]]:
        """Hash, open a session, send what the store lacks; returns (session, declared files).

        Files up to ``UPFRONT_HASH_MAX`` and files hashed before (same path, size, mtime) are
        hashed first: bytes the tenant already holds are never sent, and a declared digest lets
        the object store verify the file as it arrives (one PUT, nothing read back at
        registration). A larger file seen for the first time is hashed while its parts upload
        (its digest is declared at registration, where the registry reads it back once)."""
        sizes = {p: os.path.getsize(local) for p, local in files.items()}
        later = {p for p, local in files.items()
                 if sizes[p] > max(part_size, UPFRONT_HASH_MAX) and transfer.cached_hash(local) is None}
        with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
            first = [p for p in files if p not in later]
            digests = dict(zip(first, (h.sha256 for h in pool.map(transfer.hash_file, [files[p] for p in first])),
                               strict=True))
            session = self._c.call(self._c.registry.CreateArtifactUpload, pb.CreateArtifactUploadRequest(
                parent=parent, part_size=part_size,
                files=[pb.ArtifactFile(path=p, digest=digests.get(p, ""), size_bytes=sizes[p]) for p in files]))
            hashing = {p: pool.submit(transfer.hash_file, files[p]) for p in sorted(later)}
            self._send(session, files, sizes, concurrency, progress)
            digests.update({p: f.result().sha256 for p, f in hashing.items()})
        return session.upload, [pb.ArtifactFile(path=p, digest=digests[p], size_bytes=sizes[p]) for p in files]

    def _send(self, session: pb.CreateArtifactUploadResponse, files: dict[str, str], sizes: dict[str, int],
              concurrency: int, progress: Callable[[int, int], None] | None) -> None:
        todo = [t for t in session.targets if not t.present]
        tick = transfer.ProgressTotal(sum(sizes[t.path] for t in todo), progress)

        def send(t: pb.ArtifactUploadTarget) -> None:
            local = files[t.path]
            if t.stream:
                self._stream_file(session.upload, t.path, local, session.part_size, tick)
            elif t.part_urls:
                transfer.upload_parts(local, session.part_size, dict(t.part_urls), concurrency=concurrency, progress=tick)
            else:
                transfer.put_file(local, t.url, progress=tick, headers=dict(t.headers))

        small = [t for t in todo if not t.part_urls]
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(small) or 1))) as pool:
            list(pool.map(send, small))
        for t in todo:
            if t.part_urls:
                send(t)
        if progress and not todo:
            progress(0, 0)

    def _stream_file(self, upload: str, path: str, local: str, part_size: int, tick: Callable[[int], None]) -> None:
        size = os.path.getsize(local)
        step = size if size <= part_size else part_size

        def chunks() -> Iterator[pb.UploadArtifactRequest]:
            with open(local, "rb") as f:
                offset = 0
                while True:
                    data = f.read(step) if step else b""
                    if not data and offset:
                        return
                    yield pb.UploadArtifactRequest(upload=upload, path=path, offset=offset, data=data,
                                                   crc32c=google_crc32c.value(data))
                    tick(len(data))
                    offset += len(data)
                    if not data:
                        return

        self._c.call(self._c.registry.UploadArtifact, chunks(), timeout=24 * 3600)

    # -- models -----------------------------------------------------------------------------
    def create(self, name: str, *, description: str = "", tags: dict[str, str] | None = None,
               request_id: str | None = None) -> Model:
        """Create an empty model (``register`` also creates one with its first version)."""
        parent, _, model_id = _name("models", name).rpartition("/models/")
        req = pb.CreateModelRequest(parent=parent, model_id=model_id, description=description, tags=tags or {},
                                    request_id=request_id or os.urandom(8).hex())
        return Model.from_proto(self._c.call(self._c.registry.CreateModel, req).model)

    def update(self, name: str, *, description: str | None = None, tags: dict[str, str] | None = None,
               protected_aliases: builtins.list[str] | None = None, etag: str = "") -> Model:
        """Change what is given (None leaves a field as it is; ``tags`` replaces all tags);
        ``protected_aliases`` needs the maintainer role; ``etag`` makes it compare-and-swap."""
        mask = [f for f, v in (("description", description), ("tags", tags),
                                ("protected_aliases", protected_aliases)) if v is not None]
        m = pb.Model(name=_name("models", name), description=description or "", tags=tags or {},
                     protected_aliases=protected_aliases or [], etag=etag)
        resp = self._c.call(self._c.registry.UpdateModel, pb.UpdateModelRequest(model=m, update_mask=mask))
        return Model.from_proto(resp.model)

    # -- read -------------------------------------------------------------------------------
    def list(self, *, filter: str = "", page_size: int = 100, limit: int | None = None) -> Paged[Model]:
        """The tenant's models (``filter`` e.g. "tags.team=nlp"), fetched page by page as
        iteration reaches them."""
        def page(token: str, size: int) -> tuple[Sequence[Model], str]:
            resp = self._c.call(self._c.registry.ListModels, pb.ListModelsRequest(page_size=size, page_token=token,
                                                                                 filter=filter))
            return [Model.from_proto(m) for m in resp.models], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

    def get(self, name: str, version: str | int | None = None) -> Model | ModelVersion:
        if version is None:
            return Model.from_proto(self._c.call(self._c.registry.GetModel, pb.GetModelRequest(name=_name("models", name))).model)
        req = pb.GetModelVersionRequest(name=f"{_name('models', name)}/versions/{version}")
        return ModelVersion.from_proto(self._c.call(self._c.registry.GetModelVersion, req).version)

    def versions(self, name: str = "-", *, filter: str = "", order_by: str = "", show_deleted: bool = False,
                 page_size: int = 50, limit: int | None = None, page_token: str = "") -> Paged[ModelVersion]:
        """Versions (newest first by default), fetched page by page as iteration reaches them;
        ``name="-"`` searches every model of the tenant. Resume a stopped iteration with its
        ``next_page_token`` as ``page_token``."""
        def page(token: str, size: int) -> tuple[Sequence[ModelVersion], str]:
            req = pb.ListModelVersionsRequest(parent=_name("models", name), page_size=size, filter=filter,
                                              order_by=order_by, show_deleted=show_deleted, page_token=token)
            resp = self._c.call(self._c.registry.ListModelVersions, req)
            return [ModelVersion.from_proto(v) for v in resp.versions], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit, page_token=page_token)

    def resolve(self, uri: str) -> ModelVersion:
        """``models:/<model>@<alias>``, ``models:/<model>/versions/<n>`` or ``models:/<model>/latest``."""
        return ModelVersion.from_proto(self._c.call(self._c.registry.ResolveModelUri,
                                                    pb.ResolveModelUriRequest(uri=uri)).version)

    def lineage(self, name: str, version: str | int) -> Lineage:
        """The graph dataset version -> job -> checkpoint -> this version -> deployments."""
        req = pb.GetLineageRequest(name=f"{_name('models', name)}/versions/{version}")
        return Lineage.from_proto(self._c.call(self._c.registry.GetLineage, req))

    # -- aliases ----------------------------------------------------------------------------
    def get_alias(self, name: str, alias: str) -> Alias:
        """Where an alias points, with its etag (for ``set_alias``/``delete_alias``)."""
        full = f"{_name('models', name)}/aliases/{alias}"
        return Alias.from_proto(self._c.call(self._c.registry.GetAlias, pb.GetAliasRequest(name=full)).alias)

    def set_alias(self, name: str, alias: str, version: int, *, etag: str = "") -> Alias:
        """Point ``alias`` at ``version``; with ``etag`` only if the alias is unchanged since
        (compare-and-swap, else AbortedError)."""
        req = pb.SetAliasRequest(name=f"{_name('models', name)}/aliases/{alias}", version=version, etag=etag)
        return Alias.from_proto(self._c.call(self._c.registry.SetAlias, req).alias)

    def delete_alias(self, name: str, alias: str, *, etag: str = "") -> None:
        full = f"{_name('models', name)}/aliases/{alias}"
        self._c.call(self._c.registry.DeleteAlias, pb.DeleteAliasRequest(name=full, etag=etag))

    def alias_history(self, name: str, alias: str, *, page_size: int = 100,
                      limit: int | None = None) -> Paged[AliasMove]:
        """Every move of an alias, newest first, fetched page by page as iteration reaches them."""
        full = f"{_name('models', name)}/aliases/{alias}"

        def page(token: str, size: int) -> tuple[Sequence[AliasMove], str]:
            req = pb.ListAliasHistoryRequest(name=full, page_size=size, page_token=token)
            resp = self._c.call(self._c.registry.ListAliasHistory, req)
            return [AliasMove.from_proto(m) for m in resp.moves], resp.next_page_token

        return Paged(page, page_size=page_size, limit=limit)

    # -- lifecycle --------------------------------------------------------------------------
    def archive(self, name: str, version: int, *, restore: bool = False, etag: str = "") -> ModelVersion:
        """Archive a version (or bring it back to READY with ``restore=True``)."""
        state = pb.MODEL_VERSION_STATE_READY if restore else pb.MODEL_VERSION_STATE_ARCHIVED
        v = pb.ModelVersion(name=f"{_name('models', name)}/versions/{version}", state=state, etag=etag)
        resp = self._c.call(self._c.registry.UpdateModelVersion, pb.UpdateModelVersionRequest(version=v, update_mask=["state"]))
        return ModelVersion.from_proto(resp.version)

    def delete_version(self, name: str, version: int, *, etag: str = "") -> None:
        req = pb.DeleteModelVersionRequest(name=f"{_name('models', name)}/versions/{version}", etag=etag)
        self._c.call(self._c.registry.DeleteModelVersion, req)

    def delete(self, name: str) -> None:
        self._c.call(self._c.registry.DeleteModel, pb.DeleteModelRequest(name=_name("models", name)))

    # -- download ---------------------------------------------------------------------------
    def download(self, uri_or_name: str, dest: str | None = None, *, version: str | int | None = None,
                 concurrency: int = transfer.DEFAULT_CONCURRENCY, cache_dir: str | None = None,
                 verify: str = "crc32c", progress: Callable[[int, int], None] | None = None) -> str:
        """Fetch a version's files into ``dest`` (default: a directory in the local cache) and
        return that directory. Accepts a ``models:/`` URI, or a model name plus ``version``.
        Files are verified before they enter the cache, keyed by digest: a second download of
        the same content reads nothing from the network. Interrupted downloads resume.
        ``verify``: "crc32c" (default) checks each file against the CRC32C the registry computed
        while it verified the file's sha256 at registration, falling back to the sha256 where a
        file has none; "sha256" always recomputes the sha256 (about 5x the CPU)."""
        if verify not in ("crc32c", "sha256"):
            raise ValueError(f"verify must be 'crc32c' or 'sha256', got {verify!r}")
        v = self.resolve(uri_or_name) if uri_or_name.startswith("models:/") else self.get(uri_or_name, version or "latest")
        assert isinstance(v, ModelVersion)
        cache = transfer.BlobCache(cache_dir)
        resp = self._c.call(self._c.registry.GetArtifactDownload, pb.GetArtifactDownloadRequest(name=v.name))
        unique = {loc.file.digest: loc for loc in resp.files}  # identical files are fetched once
        missing = [loc for loc in unique.values() if not cache.has(loc.file.digest)]
        tick = transfer.ProgressTotal(sum(loc.file.size_bytes for loc in missing), progress)

        def fetch(loc: pb.ArtifactLocation) -> None:
            f = loc.file
            if loc.url:
                crc = f.crc32c if verify == "crc32c" else 0
                cache.fetch(f.digest, f.size_bytes, loc.url, crc32c=crc, concurrency=concurrency, progress=tick)
            else:
                self._stream_download(v.name, f, cache, tick)

        with ThreadPoolExecutor(max_workers=max(1, min(4, len(missing) or 1))) as pool:
            list(pool.map(fetch, missing))
        target = dest or os.path.join(cache.root, "..", "models", *v.name.split("/")[1::2])
        transfer.materialize([(loc.file.path, cache.path(loc.file.digest)) for loc in resp.files], target,
                             link=dest is None)
        return os.path.abspath(target)

    def _stream_download(self, version: str, f: pb.ArtifactFile, cache: transfer.BlobCache,
                         tick: Callable[[int], None]) -> None:
        """Stores without URLs: stream through the registry, resuming from a partial file."""
        os.makedirs(os.path.dirname(cache.path(f.digest)), exist_ok=True)
        partial = cache.path(f.digest) + ".part"
        offset = os.path.getsize(partial) if os.path.exists(partial) else 0
        with open(partial, "ab") as out:
            req = pb.DownloadArtifactRequest(name=version, path=f.path, offset=offset)
            for chunk in self._c.stream(self._c.registry.DownloadArtifact, req):
                if google_crc32c.value(chunk.data) != chunk.crc32c or chunk.offset != out.tell():
                    raise transfer.TransferError(f"{f.path}: damaged chunk at offset {chunk.offset}")
                out.write(chunk.data)
                tick(len(chunk.data))
        got = transfer.hash_file(partial, use_cache=False).sha256
        if got != f.digest:
            os.remove(partial)
            raise transfer.TransferError(f"{f.path}: downloaded bytes hash to {got}, expected {f.digest}")
        cache.adopt(f.digest, partial)

    def export(self, uri_or_name: str, dest: str, **kw: Any) -> str:
        """Write a version as a plain, editable local directory (e.g. an HF-format model)."""
        return self.download(uri_or_name, dest, **kw)
