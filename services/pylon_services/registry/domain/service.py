"""Registry use cases over the object store (the source of truth).

Layout under ``tenants/{t}/models/{m}/``: ``model.json``; ``versions/{n:010d}.json`` (immutable
manifests, numbers allocated by create-only puts); ``aliases/{alias}.json`` (moved by
compare-and-swap on the etag) with ``alias-history/{alias}/{time}.json``; ``requests/{id}.json``
(idempotent creates); ``deployments/{n}/{deployment}.json``. Artifacts are content-addressed
blobs under ``tenants/{t}/blobs/``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from pylon_services.common import blobs
from pylon_services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from pylon_services.common.names import check_id
from pylon_services.storage.base import EtagMismatch, ObjectExists, ObjectStore

URI_RE = re.compile(r"^models:/(?P<model>[^/@]+)(?:@(?P<alias>[^/]+)|/versions/(?P<version>\d+)|/(?P<latest>latest))$")
FORMATS = ("unspecified", "hf_transformers", "safetensors", "torch", "onnx", "other", "pylon_gpt")


@dataclass
class VersionSpec:
    """What a caller asks to register."""

    source_prefix: str
    files: dict[str, str] = field(default_factory=dict)  # path -> expected digest ("" = compute)
    format: str = "unspecified"
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""


class Registry:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def _model_prefix(tenant: str, model: str) -> str:
        return f"tenants/{tenant}/models/{model}/"

    def create_model(self, tenant: str, model: str, description: str = "", tags: dict[str, str] | None = None,
                     creator: str = "") -> dict[str, Any]:
        """Create ``model.json`` if missing; returns the stored model (existing one if present)."""
        check_id("model_id", model)
        key = self._model_prefix(tenant, model) + "model.json"
        doc = {"name": f"tenants/{tenant}/models/{model}", "description": description, "tags": tags or {},
               "create_time": time.time(), "creator": creator}
        try:
            self.store.put(key, blobs.dump(doc), if_none_match=True)
        except ObjectExists:
            return blobs.read_json(self.store, key)
        return doc

    def get_model(self, tenant: str, model: str) -> dict[str, Any]:
        doc = blobs.read_json_or_none(self.store, self._model_prefix(tenant, model) + "model.json")
        if doc is None:
            raise NotFound(f"tenants/{tenant}/models/{model} not found")
        prefix = self._model_prefix(tenant, model)
        doc["latest_version"] = blobs.latest_number(self.store, prefix + "versions/")
        doc["aliases"] = {o.key.rsplit("/", 1)[1][:-5]: blobs.read_json(self.store, o.key)["version"]
                          for o in self.store.iter_all(prefix + "aliases/")}
        return doc

    def list_models(self, tenant: str, page_size: int, page_token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        prefix = f"tenants/{tenant}/models/"
        out: list[dict[str, Any]] = []
        token = page_token
        while len(out) < page_size:
            page = self.store.list(prefix, page_size=1000, page_token=token)
            for o in page.objects:
                if o.key.endswith("/model.json") and o.key.count("/") == 4:
                    out.append(self.get_model(tenant, o.key.split("/")[3]))
                    if len(out) >= page_size:
                        return out, o.key
            if not page.next_page_token:
                return out, None
            token = page.next_page_token
        return out, token

    def create_version(self, tenant: str, model: str, spec: VersionSpec, creator: str) -> dict[str, Any]:
        """Copy artifacts into content-addressed blobs, verify digests, then claim the next number
        with a create-only manifest write; nothing is visible before that single write."""
        self.create_model(tenant, model, creator=creator)
        prefix = self._model_prefix(tenant, model)
        if spec.request_id:
            done = blobs.read_json_or_none(self.store, f"{prefix}requests/{spec.request_id}.json")
            if done:
                return self.get_version(tenant, model, str(done["version"]))
        if spec.format not in FORMATS:
            raise InvalidArgument.field("format", f"must be one of {', '.join(FORMATS)}")
        files = self._collect_files(tenant, spec)
        now = time.time()

        def doc_for(n: int) -> dict[str, Any]:
            return {"name": f"tenants/{tenant}/models/{model}/versions/{n}", "version": n, "state": "ready",
                    "format": spec.format, "files": files, "config": spec.config, "metrics": spec.metrics,
                    "tags": spec.tags, "description": spec.description, "lineage": spec.lineage,
                    "creator": creator, "create_time": now, "digest": blobs.manifest_digest(files)}

        n, doc = blobs.allocate_numbered(self.store, prefix + "versions/", doc_for)
        if spec.request_id:
            try:
                self.store.put(f"{prefix}requests/{spec.request_id}.json", blobs.dump({"version": n}), if_none_match=True)
            except ObjectExists:
                pass
        return self._decorate(tenant, model, doc)

    def _collect_files(self, tenant: str, spec: VersionSpec) -> list[dict[str, Any]]:
        src = spec.source_prefix.rstrip("/") + "/"
        present = {o.key[len(src):]: o for o in self.store.iter_all(src)}
        if not present:
            raise InvalidArgument.field("source_uri", f"no files under {spec.source_prefix!r}")
        wanted = spec.files or {p: "" for p in present}
        files = []
        for path, expected in sorted(wanted.items()):
            if path not in present:
                raise InvalidArgument.field(f"files[{path}]", f"missing from {spec.source_prefix}")
            digest, size = blobs.sha256_of_object(self.store, src + path)
            if expected and expected != digest:
                raise InvalidArgument.field(f"files[{path}].digest", f"expected {expected}, stored bytes are {digest}")
            key = blobs.store_blob_from(self.store, tenant, src + path, digest)
            files.append({"path": path, "digest": digest, "size_bytes": size, "object_key": key})
        return files

    def get_version(self, tenant: str, model: str, version: str) -> dict[str, Any]:
        doc = blobs.read_numbered(self.store, self._model_prefix(tenant, model) + "versions/", version)
        if doc is None:
            raise NotFound(f"tenants/{tenant}/models/{model}/versions/{version} not found")
        return self._decorate(tenant, model, doc)

    def _decorate(self, tenant: str, model: str, doc: dict[str, Any]) -> dict[str, Any]:
        prefix = self._model_prefix(tenant, model)
        n = doc["version"]
        doc = dict(doc)
        doc["aliases"] = sorted(a for a, v in self.get_model(tenant, model)["aliases"].items() if v == n)
        doc["deployments"] = sorted(blobs.read_json(self.store, o.key)["deployment"]
                                    for o in self.store.iter_all(f"{prefix}deployments/{n}/"))
        return doc

    def list_versions(self, tenant: str, model: str, page_size: int, page_token: str | None
                      ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first."""
        self.get_model(tenant, model)
        return blobs.page_numbered(self.store, self._model_prefix(tenant, model) + "versions/", page_size, page_token,
                                   lambda n: self.get_version(tenant, model, str(n)))

    def set_alias(self, tenant: str, model: str, alias: str, version: int, etag: str, actor: str) -> dict[str, Any]:
        """Point ``alias`` at ``version``; with ``etag``, only if the alias is unchanged (CAS)."""
        check_id("alias", alias)
        self.get_version(tenant, model, str(version))
        key = self._model_prefix(tenant, model) + f"aliases/{alias}.json"
        old = blobs.read_json_or_none(self.store, key)
        doc = {"version": version, "update_time": time.time(), "updated_by": actor}
        try:
            info = self.store.put(key, blobs.dump(doc), if_match=etag) if etag else self.store.put(key, blobs.dump(doc))
        except EtagMismatch as e:
            raise EtagMismatch(f"alias {alias} changed since etag {etag}; re-read it and retry") from e
        hist = self._model_prefix(tenant, model) + f"alias-history/{alias}/{time.time_ns():020d}.json"
        self.store.put(hist, blobs.dump({"from": old["version"] if old else 0, "to": version,
                                          "actor": actor, "time": doc["update_time"]}))
        return {**doc, "name": f"tenants/{tenant}/models/{model}/aliases/{alias}", "etag": info.etag}

    def get_alias(self, tenant: str, model: str, alias: str) -> dict[str, Any]:
        key = self._model_prefix(tenant, model) + f"aliases/{alias}.json"
        doc = blobs.read_json_or_none(self.store, key)
        if doc is None:
            raise NotFound(f"tenants/{tenant}/models/{model}/aliases/{alias} not found")
        return {**doc, "name": f"tenants/{tenant}/models/{model}/aliases/{alias}", "etag": self.store.head(key).etag}

    def resolve_uri(self, tenant: str, uri: str) -> dict[str, Any]:
        m = URI_RE.match(uri or "")
        if not m:
            raise InvalidArgument.field("uri", "must be models:/<model>@<alias>, models:/<model>/versions/<n> "
                                               "or models:/<model>/latest")
        model = check_id("uri", m["model"])
        if m["alias"]:
            return self.get_version(tenant, model, str(self.get_alias(tenant, model, m["alias"])["version"]))
        return self.get_version(tenant, model, m["version"] or "latest")

    def record_deployment(self, tenant: str, model: str, version: int, deployment: str, removed: bool) -> dict[str, Any]:
        self.get_version(tenant, model, str(version))
        key = self._model_prefix(tenant, model) + f"deployments/{version}/{deployment.replace('/', '~')}.json"
        if removed:
            self.store.delete(key)
        else:
            self.store.put(key, blobs.dump({"deployment": deployment, "time": time.time()}))
        return self.get_version(tenant, model, str(version))

    def lineage(self, tenant: str, model: str, version: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Graph dataset versions -> job -> checkpoint -> model version -> deployments."""
        v = self.get_version(tenant, model, version)
        lin = v.get("lineage", {})
        nodes = [{"name": v["name"], "kind": "model_version", "attributes": {"digest": v["digest"]}}]
        edges: list[tuple[str, str]] = []
        upstream = v["name"]
        if lin.get("checkpoint"):
            nodes.append({"name": lin["checkpoint"], "kind": "checkpoint", "attributes": {}})
            edges.append((lin["checkpoint"], upstream))
            upstream = lin["checkpoint"]
        if lin.get("job"):
            nodes.append({"name": lin["job"], "kind": "job", "attributes": {}})
            edges.append((lin["job"], upstream))
            upstream = lin["job"]
        for ds, dg in zip(lin.get("datasets", []), lin.get("dataset_digests", []) + [""] * 99, strict=False):
            nodes.append({"name": ds, "kind": "dataset_version", "attributes": {"digest": dg}})
            edges.append((ds, upstream))
        for dep in v["deployments"]:
            nodes.append({"name": dep, "kind": "deployment", "attributes": {}})
            edges.append((v["name"], dep))
        return nodes, edges

    def ensure_deletable(self, tenant: str, model: str, version: int) -> None:
        v = self.get_version(tenant, model, str(version))
        if v["aliases"] or v["deployments"]:
            raise FailedPrecondition(f"version {version} is used by aliases {v['aliases']} "
                                     f"and deployments {v['deployments']}")
