"""Registry use cases: models, versions, aliases, deployments, lineage.

Object storage is the source of truth (layout in ``layout.py``); the index answers reads. Each
write happens between ``index.begin`` and ``index.end`` so a crash leaves a marker naming the
model to resync (``rebuild.sync_model``). Numbers come from create-only manifest writes, alias
moves are compare-and-swap on the alias document's etag, and a manifest is written only once
its artifacts are verified and stored: no reader ever sees a half-registered version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pylon_services.common import blobs, deadline, paging
from pylon_services.common import layout as shared
from pylon_services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PylonError,
)
from pylon_services.common.limits import check_etag, check_request_id, quote
from pylon_services.common.names import check_id
from pylon_services.registry.domain import artifacts, checks, layout, listing, rebuild
from pylon_services.registry.domain.artifacts import DeclaredFile
from pylon_services.registry.domain.ports import RegistryIndex
from pylon_services.registry.domain.query import compile_filter, parse_order, sort_key
from pylon_services.storage.base import EtagMismatch, ObjectExists, ObjectNotFound, ObjectStore

log = logging.getLogger("pylon.registry")

FORMATS = layout.FORMATS
MAX_SCAN = listing.MAX_SCAN


@dataclass
class VersionSpec:
    """What a caller asks to register."""

    source_prefix: str = ""
    files: list[DeclaredFile] = field(default_factory=list)
    upload: str = ""  # upload session id (SDK uploads); its staging area is the source
    format: str = "unspecified"
    config: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""


def decorate(doc: dict[str, Any], aliases: dict[str, dict[str, Any]], deps: list[str]) -> dict[str, Any]:
    """A version as returned to callers: with the aliases pointing at it and its deployments.
    A new dict: ``doc`` may be shared (the read cache hands the same one to every caller)."""
    return {**doc, "aliases": sorted(a for a, d in aliases.items() if d["version"] == doc["version"]),
            "deployments": deps}


def _not_found(what: str) -> NotFound:
    return NotFound(f"{what} not found")


class Registry:
    def __init__(self, store: ObjectStore, index: RegistryIndex,
                 verified_put_max: int = artifacts.VERIFIED_PUT_MAX) -> None:
        self.store = store
        self.index = index
        self.verified_put_max = verified_put_max  # see artifacts.create_upload
        # CRC32Cs of files registered without one, taken after registration (one at a time).
        self._crc = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-crc32c")

    @contextmanager
    def _writing(self, tenant: str, model: str) -> Iterator[None]:
        """Bracket a write with a write-ahead marker; on failure resync the model's index entries
        from storage so the index never keeps a half-applied change."""
        token = self.index.begin(tenant, model)
        try:
            yield
        except PylonError:
            raise  # a refused request (stale etag, bad input): raised before anything was written
        except BaseException:
            rebuild.sync_model(self.store, self.index, tenant, model)
            raise
        finally:
            self.index.end(token)

    # -- models -------------------------------------------------------------------------------
    def create_model(self, tenant: str, model: str, *, description: str = "", tags: dict[str, str] | None = None,
                     protected_aliases: list[str] | None = None, creator: str = "", request_id: str = "",
                     exist_ok: bool = False) -> dict[str, Any]:
        check_id("model_id", model)
        check_request_id("request_id", request_id)
        checks.model_fields({"description": description, "tags": tags or {},
                             "protected_aliases": protected_aliases or []})
        doc = {"name": f"tenants/{tenant}/models/{model}", "description": description, "tags": tags or {},
               "protected_aliases": sorted(set(protected_aliases if protected_aliases is not None
                                               else layout.DEFAULT_PROTECTED)),
               "create_time": time.time(), "creator": creator, "request_id": request_id}
        with self._writing(tenant, model):
            try:
                info = self.store.put(layout.model_key(tenant, model), blobs.dump(doc), if_none_match=True)
            except ObjectExists:
                existing = self.index.get_model(tenant, model)
                if existing is None:
                    rebuild.sync_model(self.store, self.index, tenant, model)
                    existing = self.index.get_model(tenant, model)
                if exist_ok or (request_id and existing and existing.get("request_id") == request_id):
                    return self.get_model(tenant, model)
                raise AlreadyExists(f"{doc['name']} already exists") from None
            self._mark_tenant(tenant)
            self.index.put_model(tenant, model, {**doc, "etag": info.etag})
        return self.get_model(tenant, model)

    def _mark_tenant(self, tenant: str) -> None:
        try:
            self.store.put(layout.tenant_marker(tenant), b"{}", if_none_match=True)
        except ObjectExists:
            pass

    def get_model(self, tenant: str, model: str) -> dict[str, Any]:
        doc = self.index.get_model(tenant, model)
        if doc is None:
            raise _not_found(f"tenants/{tenant}/models/{model}")
        doc["aliases"] = {a: d["version"] for a, d in self.index.aliases(tenant, model).items()}
        doc["latest_version"] = self.index.latest_version(tenant, model)
        return doc

    def list_models(self, tenant: str, page_size: int, page_token: str | None, filter_text: str = ""
                    ) -> tuple[list[dict[str, Any]], str | None]:
        """Models in name order (``listing.models_page``)."""
        keep = compile_filter(filter_text)
        return listing.models_page(self.index, tenant, page_size, page_token, keep, filter_text,
                                   lambda m: self.get_model(tenant, m))

    def update_model(self, tenant: str, model: str, changes: dict[str, Any], etag: str) -> dict[str, Any]:
        """Change description, tags or protected aliases; compare-and-swap when ``etag`` is set."""
        unknown = set(changes) - {"description", "tags", "protected_aliases"}
        if unknown:
            raise InvalidArgument.field("update_mask", f"cannot update {sorted(unknown)}: only description, tags, "
                                                       "protected_aliases")
        checks.model_fields(changes, "model.")
        check_etag("model.etag", etag)
        key = layout.model_key(tenant, model)
        with self._writing(tenant, model):
            try:
                current = self.store.head(key)
            except ObjectNotFound:
                raise _not_found(f"tenants/{tenant}/models/{model}") from None
            if etag and etag != current.etag:
                raise Aborted(f"model {model} changed since etag {quote(etag)}; re-read it and retry")
            doc = {**blobs.read_json(self.store, key), **changes, "update_time": time.time()}
            try:
                info = self.store.put(key, blobs.dump(doc), if_match=current.etag)
            except EtagMismatch:
                raise Aborted(f"model {model} changed concurrently; re-read it and retry") from None
            self.index.put_model(tenant, model, {**doc, "etag": info.etag})
        return self.get_model(tenant, model)

    def delete_model(self, tenant: str, model: str) -> None:
        """Delete a model whose versions are all deleted. Its version numbers are never reused."""
        self.get_model(tenant, model)
        live = [d["version"] for d in self._scan_all(tenant, model) if d["state"] != "deleted"]
        if live:
            raise FailedPrecondition(f"model {model} still has versions {live[:10]} that are not deleted")
        with self._writing(tenant, model):
            self.store.delete(layout.model_key(tenant, model))
            self.index.drop_model(tenant, model)

    # -- versions -----------------------------------------------------------------------------
    def create_version(self, tenant: str, model: str, spec: VersionSpec, creator: str) -> dict[str, Any]:
        """Verify and store the artifacts, then claim the next number with one create-only
        manifest write: the version is invisible until complete. Idempotent on request_id."""
        if spec.format in layout.RESERVED_FORMATS.values():
            raise InvalidArgument.field("format", f"{spec.format} (a reserved format) is not accepted for new versions: "
                                                  "register the model as a Hugging Face directory (config.json and "
                                                  "safetensors weights) in format hf_transformers")
        if spec.format not in FORMATS:
            raise InvalidArgument.field("format", f"must be one of {', '.join(FORMATS)}")
        checks.version_spec(spec)
        if self.index.get_model(tenant, model) is None:
            self.create_model(tenant, model, creator=creator, exist_ok=True)
        if spec.request_id:
            done = self._request(tenant, model, spec.request_id)
            if done:
                return self.get_version(tenant, model, str(done))
        known = self.known_blob(tenant)
        session = artifacts.load_upload(self.store, tenant, spec.upload) if spec.upload else None
        if session:
            artifacts.finish_upload(self.store, session)
            try:
                files = artifacts.collect_from_upload(self.store, session, spec.files, known)
            except InvalidArgument:
                artifacts.discard_upload(self.store, session, set())  # bad bytes never linger
                raise
        else:
            files = artifacts.collect_from_prefix(self.store, tenant, spec.source_prefix, spec.files, known)
        now = time.time()

        def manifest(n: int) -> dict[str, Any]:
            return {"name": f"tenants/{tenant}/models/{model}/versions/{n}", "version": n, "state": "ready",
                    "format": spec.format, "files": files, "config": spec.config, "signature": spec.signature,
                    "metrics": spec.metrics, "tags": spec.tags, "description": spec.description,
                    "lineage": spec.lineage, "creator": creator, "create_time": now,
                    "digest": blobs.manifest_digest(files), "request_id": spec.request_id}

        prefix = shared.model_versions_prefix(tenant, model)
        with self._writing(tenant, model):
            n, doc = blobs.allocate_numbered(self.store, prefix, manifest)
            if spec.request_id:
                try:
                    self.store.put(layout.request_key(tenant, model, spec.request_id), blobs.dump({"version": n}),
                                   if_none_match=True)
                except ObjectExists:
                    pass
                self.index.put_request(tenant, model, spec.request_id, n)
            self.index.put_versions(tenant, model, [shared.merge_meta(doc, None)])
            self.index.put_blobs(tenant, {f["digest"]: f["object_key"] for f in files})
        if session:
            artifacts.discard_upload(self.store, session, {f["object_key"] for f in files})
        if unchecked := [f for f in files if "crc32c" not in f and f["size_bytes"] >= artifacts.CRC_MIN_BYTES]:
            self._crc.submit(self._record_crc32c, tenant, unchecked)
        return self.get_version(tenant, model, str(n))

    def _record_crc32c(self, tenant: str, files: list[dict[str, Any]]) -> None:
        try:
            artifacts.record_crc32c(self.store, tenant, files)
        except Exception:  # noqa: BLE001 - downloads fall back to the sha256; never fatal
            log.exception("recording CRC32Cs failed")

    def known_blob(self, tenant: str) -> artifacts.KnownBlob:
        """Where verified bytes with a digest are stored in this tenant, if anywhere: the index's
        map (filled from manifests), else the canonical content-addressed key."""
        def lookup(digest: str) -> str | None:
            key = self.index.blob(tenant, digest)
            if key and self.store.exists(key):
                return key
            canonical = blobs.blob_key(tenant, digest)
            return canonical if self.store.exists(canonical) else None
        return lookup

    def _request(self, tenant: str, model: str, request_id: str) -> int | None:
        n = self.index.request(tenant, model, request_id)
        if n is None:
            doc = blobs.read_json_or_none(self.store, layout.request_key(tenant, model, request_id))
            n = int(doc["version"]) if doc else None
        return n

    def _number(self, tenant: str, model: str, ref: str) -> int:
        """A version reference ("3" or "latest": the newest version not deleted) as a number."""
        if ref != "latest":
            return int(ref) if ref.isascii() and ref.isdigit() and len(ref) <= 10 else 0
        below = None
        while True:
            deadline.check("resolving latest")
            batch = self.index.scan_versions(tenant, model, below, 100)
            for d in batch:
                if d["state"] != "deleted":
                    return int(d["version"])
            if len(batch) < 100:
                return 0
            below = batch[-1]["version"]

    def get_version(self, tenant: str, model: str, ref: str) -> dict[str, Any]:
        n = self._number(tenant, model, ref)
        doc, aliases, deps = self.index.version_view(tenant, model, n)
        if doc is None:
            raise _not_found(f"tenants/{tenant}/models/{model}/versions/{ref}")
        return decorate(doc, aliases, deps)

    def _scan_all(self, tenant: str, model: str) -> Iterator[dict[str, Any]]:
        return listing.scan_all(self.index, tenant, model)

    def list_versions(self, tenant: str, model: str, page_size: int, page_token: str | None, *,
                      filter_text: str = "", order_by: str = "", show_deleted: bool = False
                      ) -> tuple[list[dict[str, Any]], str | None]:
        """Versions of one model, or of every model when ``model`` is "-". Newest-first pages of
        one model cost O(page) whatever the model's size; other orderings sort the matches
        (``listing``: every page is bounded in records, bytes, entries looked at and time)."""
        keep = compile_filter(filter_text)
        order = parse_order(order_by)
        models = [model] if model != "-" else [m["name"].rsplit("/", 1)[1] for m in self._all_models(tenant)]
        if model != "-":
            self.get_model(tenant, model)
        alias_maps = {m: self.index.aliases(tenant, m) for m in models}

        def wanted(doc: dict[str, Any], m: str) -> bool:
            doc.update(decorate(doc, alias_maps[m], []))  # fresh from the index: filled in place
            return (show_deleted or doc["state"] != "deleted") and keep(doc)

        scope = f"{tenant}|{model}|{filter_text}|{order_by}|{show_deleted}"
        if order.is_native and order.field == "version" and model != "-":
            return listing.native_page(self.index, tenant, model, page_size, page_token, wanted, scope)
        return listing.sorted_page(self.index, tenant, models, page_size, page_token, wanted, sort_key(order),
                                   order.descending and not order.field.startswith("metrics."), scope)

    def _all_models(self, tenant: str) -> Iterator[dict[str, Any]]:
        return listing.all_models(self.index, tenant)

    def update_version(self, tenant: str, model: str, n: int, changes: dict[str, Any], etag: str, actor: str
                       ) -> dict[str, Any]:
        """Change tags, description or state (READY <-> ARCHIVED); CAS on the version's etag."""
        unknown = set(changes) - {"tags", "description", "state"}
        if unknown:
            raise InvalidArgument.field("update_mask", f"cannot update {sorted(unknown)}: versions are immutable "
                                                       "except tags, description and state")
        if "state" in changes and changes["state"] not in ("ready", "archived"):
            raise InvalidArgument.field("version.state", "may be set to READY or ARCHIVED (use DeleteModelVersion)")
        checks.version_meta(changes)
        return self._write_meta(tenant, model, n, changes, etag, actor)

    def _write_meta(self, tenant: str, model: str, n: int, changes: dict[str, Any], etag: str, actor: str
                    ) -> dict[str, Any]:
        check_etag("etag", etag)
        current = self.get_version(tenant, model, str(n))
        if current["state"] == "deleted":
            raise FailedPrecondition(f"version {n} of {model} is deleted")
        if etag and etag != current["etag"]:
            raise Aborted(f"version {n} of {model} changed since etag {quote(etag)}; re-read it and retry")
        key = shared.model_meta_key(tenant, model, n)
        meta = {k: current[k] for k in ("state", "tags", "description")}
        meta.update(changes, update_time=time.time(), updated_by=actor)
        with self._writing(tenant, model):
            try:
                cur_meta = self.store.head(key).etag if current.get("meta_etag") else None
                info = (self.store.put(key, blobs.dump(meta), if_match=cur_meta) if cur_meta
                        else self.store.put(key, blobs.dump(meta), if_none_match=True))
            except (EtagMismatch, ObjectExists, ObjectNotFound):
                raise Aborted(f"version {n} of {model} changed concurrently; re-read it and retry") from None
            manifest = blobs.read_json(self.store, shared.model_version_key(tenant, model, n))
            doc = shared.merge_meta(manifest, {**meta, "_etag": info.etag})
            self.index.put_versions(tenant, model, [doc])
        return self.get_version(tenant, model, str(n))

    def delete_version(self, tenant: str, model: str, n: int, etag: str, actor: str) -> None:
        """Mark deleted (kept as a tombstone; artifacts are purged after the retention period).
        Refused while an alias or a deployment points at it."""
        v = self.get_version(tenant, model, str(n))
        if v["aliases"] or v["deployments"]:
            raise FailedPrecondition(f"version {n} of {model} is in use: aliases {v['aliases']}, "
                                     f"deployments {v['deployments']}; move or remove them first")
        self._write_meta(tenant, model, n, {"state": "deleted", "delete_time": time.time()}, etag, actor)

    # -- aliases ------------------------------------------------------------------------------
    def set_alias(self, tenant: str, model: str, alias: str, version: int, etag: str, actor: str, *,
                  may_move_protected: bool) -> dict[str, Any]:
        """Point ``alias`` at ``version``; with ``etag``, only if the alias is unchanged (CAS)."""
        check_id("alias", alias)
        if alias == "latest":
            raise InvalidArgument.field("alias", "'latest' is reserved")
        m = self.get_model(tenant, model)
        if alias in m.get("protected_aliases", []) and not may_move_protected:
            raise PermissionDenied(f"alias {alias!r} of {model} is protected; moving it needs the maintainer role")
        v = self.get_version(tenant, model, str(version))
        if v["state"] != "ready":
            raise FailedPrecondition(f"version {version} of {model} is {v['state']}; aliases point at READY versions")
        return self._move_alias(tenant, model, alias, version, etag, actor)

    def _move_alias(self, tenant: str, model: str, alias: str, version: int, etag: str, actor: str) -> dict[str, Any]:
        check_etag("etag", etag)
        key = layout.alias_key(tenant, model, alias)
        for _ in range(20):  # unconditional moves retry on a concurrent change; CAS moves do not
            try:
                cur = self.store.head(key)
                old = blobs.read_json(self.store, key)
            except ObjectNotFound:
                cur, old = None, None
            live = old if old and old.get("version") else None
            if etag and (cur is None or live is None or cur.etag != etag):
                raise Aborted(f"alias {alias} of {model} is at etag {cur.etag if live and cur else 'none'}, "
                              f"not {quote(etag)}; re-read it and retry")
            if version == 0 and live is None:
                raise _not_found(f"tenants/{tenant}/models/{model}/aliases/{alias}")
            doc = {"version": version, "previous": live["version"] if live else 0,
                   "seq": (old or {}).get("seq", 0) + 1, "actor": actor, "time": time.time()}
            with self._writing(tenant, model):
                try:
                    info = (self.store.put(key, blobs.dump(doc), if_match=cur.etag) if cur
                            else self.store.put(key, blobs.dump(doc), if_none_match=True))
                except (EtagMismatch, ObjectExists):
                    if etag:
                        raise Aborted(f"alias {alias} of {model} changed concurrently; re-read it and retry") from None
                    continue
                self._write_history(tenant, model, alias, doc)
                self.index.put_alias(tenant, model, alias, {**doc, "etag": info.etag} if version else None)
            return {**doc, "name": f"tenants/{tenant}/models/{model}/aliases/{alias}", "etag": info.etag}
        raise Aborted(f"alias {alias} of {model} is changing too often; retry")

    def _write_history(self, tenant: str, model: str, alias: str, doc: dict[str, Any]) -> None:
        entry = {"from": doc["previous"], "to": doc["version"], "actor": doc["actor"], "time": doc["time"]}
        try:
            self.store.put(layout.history_key(tenant, model, alias, doc["seq"]), blobs.dump(entry), if_none_match=True)
        except ObjectExists:
            pass

    def get_alias(self, tenant: str, model: str, alias: str) -> dict[str, Any]:
        doc = self.index.aliases(tenant, model).get(alias)  # one round trip: resolving is the hot path
        if doc is None:
            raise _not_found(f"tenants/{tenant}/models/{model}/aliases/{alias}")
        return {**doc, "name": f"tenants/{tenant}/models/{model}/aliases/{alias}"}

    def delete_alias(self, tenant: str, model: str, alias: str, etag: str, actor: str, *,
                     may_move_protected: bool) -> None:
        """Remove an alias (a CAS write of a tombstone, so history keeps the removal)."""
        m = self.get_model(tenant, model)
        if alias in m.get("protected_aliases", []) and not may_move_protected:
            raise PermissionDenied(f"alias {alias!r} of {model} is protected; removing it needs the maintainer role")
        self._move_alias(tenant, model, alias, 0, etag, actor)

    def alias_history(self, tenant: str, model: str, alias: str, page_size: int, page_token: str | None
                      ) -> tuple[list[dict[str, Any]], str | None]:
        """Moves newest first; the token holds the next sequence number to read, never above the
        alias's current one (checked: a forged token cannot start a longer walk than a page)."""
        self.get_model(tenant, model)
        head = blobs.read_json_or_none(self.store, layout.alias_key(tenant, model, alias))
        if head is None:
            raise _not_found(f"tenants/{tenant}/models/{model}/aliases/{alias}")
        scope = f"{tenant}/{model}/{alias}"
        start = paging.decode_int_token(page_token or "", "alias-history", scope, hi=int(head["seq"]))
        seq = int(head["seq"]) if start is None else start
        out: list[dict[str, Any]] = []
        while seq > 0 and len(out) < page_size:
            deadline.check("listing alias history")
            entry = blobs.read_json_or_none(self.store, layout.history_key(tenant, model, alias, seq))
            if entry is None and seq == head["seq"]:  # writer died before recording it: rebuild it
                self._write_history(tenant, model, alias, head)
                entry = blobs.read_json(self.store, layout.history_key(tenant, model, alias, seq))
            if entry is not None:
                out.append(entry)
            seq -= 1
        return out, (paging.encode_token("alias-history", seq, scope) if seq > 0 else None)

    # -- deployments and lineage ---------------------------------------------------------------
    def record_deployment(self, tenant: str, model: str, n: int, deployment: str, removed: bool) -> dict[str, Any]:
        v = self.get_version(tenant, model, str(n))
        if not removed and v["state"] == "deleted":
            raise FailedPrecondition(f"version {n} of {model} is deleted")
        key = layout.deployment_key(tenant, model, n, deployment)
        with self._writing(tenant, model):
            if removed:
                self.store.delete(key)
            else:
                self.store.put(key, blobs.dump({"deployment": deployment, "time": time.time()}))
            deps = set(v["deployments"]) - {deployment} if removed else set(v["deployments"]) | {deployment}
            self.index.put_deployments(tenant, model, n, sorted(deps))
        return self.get_version(tenant, model, str(n))

    def lineage(self, tenant: str, model: str, ref: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Graph dataset versions -> job -> checkpoint -> model version -> deployments (and the
        base model a fine-tune started from)."""
        v = self.get_version(tenant, model, ref)
        lin = v.get("lineage", {})
        nodes = [{"name": v["name"], "kind": "model_version", "attributes": {"digest": v["digest"], "state": v["state"]}}]
        edges: list[tuple[str, str]] = []
        upstream = v["name"]
        for kind, key in (("checkpoint", "checkpoint"), ("job", "job")):
            if lin.get(key):
                nodes.append({"name": lin[key], "kind": kind, "attributes": {}})
                edges.append((lin[key], upstream))
                upstream = lin[key]
        digests = list(lin.get("dataset_digests", []))
        for i, ds in enumerate(lin.get("datasets", [])):
            digest = digests[i] if i < len(digests) else ""
            nodes.append({"name": ds, "kind": "dataset_version", "attributes": {"digest": digest}})
            edges.append((ds, upstream))
        if lin.get("base_model"):
            nodes.append({"name": lin["base_model"], "kind": "model_version", "attributes": {"role": "base"}})
            edges.append((lin["base_model"], upstream))
        for dep in v["deployments"]:
            nodes.append({"name": dep, "kind": "deployment", "attributes": {}})
            edges.append((v["name"], dep))
        return nodes, edges

