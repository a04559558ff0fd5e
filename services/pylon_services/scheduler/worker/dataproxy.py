"""A job's scoped way to its data: an HTTP endpoint the worker serves on 127.0.0.1 for its user
code, with a token of its own and access to the job's prefixes only.

User code holds no object-store credentials (``isolation.py``). It reads the dataset versions its
spec names and anything under its own job prefix, and writes only under its job's ``output/`` and
``checkpoint/``, through this endpoint, with the bearer token the worker passes it
(``PYLON_DATA_URL``, ``PYLON_DATA_TOKEN``; ``pylon.train.data_store()`` wraps them). Another job's
process cannot use it without the token, which lives only in this job's environment (readable by
this job's user only). Requests:

- ``GET /v1/objects/<key>`` (``Range: bytes=a-b`` for a part), ``HEAD /v1/objects/<key>``
- ``PUT /v1/objects/<key>`` (the body; ``Content-Length`` required)
- ``GET /v1/list?prefix=<p>&after=<key>``: ``{"objects": [{"key", "size"}], "next": <key or "">}``
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pylon_services.common import blobs, layout
from pylon_services.storage.base import ObjectNotFound, ObjectStore

MAX_PUT_BYTES = 5 << 30
LIST_PAGE = 1000
_RANGE = re.compile(r"bytes=(\d{1,15})-(\d{0,15})")
_COPY_CHUNK = 1 << 20


class Scope:
    """What a job may read and write: key prefixes (and exact keys for reads)."""

    def __init__(self, read_prefixes: Iterable[str], read_keys: Iterable[str], write_prefixes: Iterable[str],
                 datasets: dict[str, int] | None = None) -> None:
        self.read_prefixes = tuple(read_prefixes)
        self.read_keys = frozenset(read_keys)
        self.write_prefixes = tuple(write_prefixes)
        # The job's dataset versions as it named them -> the version number read ("latest" resolved).
        self.datasets = dict(datasets or {})

    def can_read(self, key: str) -> bool:
        return key in self.read_keys or key.startswith(self.read_prefixes)

    def can_write(self, key: str) -> bool:
        return key.startswith(self.write_prefixes)

    def can_list(self, prefix: str) -> bool:
        return prefix.startswith(self.read_prefixes)


def job_scope(store: ObjectStore, tenant: str, job_id: str, datasets: Iterable[str]) -> Scope:
    """A job's scope: read its own prefix and the named dataset versions (their manifest, the
    files it names, their tokenizations and shards); write its ``output/`` and ``checkpoint/``."""
    own = f"tenants/{tenant}/jobs/{job_id}/"
    prefixes, keys, versions = [own], [], {}
    for name in datasets:
        _, t, _, dataset, _, version = name.split("/")
        owner = tenant if t == "-" else t  # another tenant's only for an admin's job (checked at submit)
        manifest = layout.read_dataset_version(store, owner, dataset, version)
        n = int(manifest["version"])
        versions[name] = n
        keys.append(layout.dataset_version_key(owner, dataset, n))
        for group in ("files", "processed_files", "reject_files"):
            keys.extend(f["object_key"] for f in manifest.get(group, []) if f.get("object_key"))
        toks = layout.tokenization_key(owner, dataset, n, "x").rsplit("/", 1)[0] + "/"
        prefixes.append(toks)
        for info in store.iter_all(toks):
            doc = blobs.read_json_or_none(store, info.key) or {}
            if doc.get("shard_prefix"):
                prefixes.append(doc["shard_prefix"])
    return Scope(prefixes, keys, [own + "output/", own + "checkpoint/"], versions)


def valid_key(key: str) -> bool:
    parts = key.split("/")
    return 0 < len(key) <= 1024 and "\x00" not in key and not key.startswith("/") and ".." not in parts and "" not in parts


class DataProxy:
    """Serves one job attempt's worker (see the module's doc); ``start`` returns (url, token)."""

    def __init__(self, store: ObjectStore, scope: Scope) -> None:
        self.store, self.scope = store, scope
        self.token = secrets.token_urlsafe(32)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> tuple[str, str]:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="pylon-data-proxy", daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}", self.token

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    owner: DataProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the job's log is for the job; refusals are answered, not logged here

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode(), {"Content-Type": "application/json"})

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "").encode()
        if hmac.compare_digest(got, f"Bearer {self.owner.token}".encode()):
            return True
        self._error(HTTPStatus.UNAUTHORIZED, "this job's data token is required")
        return False

    def _key(self) -> str | None:
        path = urlsplit(self.path).path
        if not path.startswith("/v1/objects/"):
            self._error(HTTPStatus.NOT_FOUND, "unknown path")
            return None
        key = unquote(path[len("/v1/objects/"):])
        if not valid_key(key):
            self._error(HTTPStatus.BAD_REQUEST, "not a valid object key")
            return None
        return key

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if urlsplit(self.path).path == "/v1/list":
            self._list()
            return
        key = self._key()
        if key is None:
            return
        if not self.owner.scope.can_read(key):
            self._error(HTTPStatus.FORBIDDEN, "outside what this job may read")
            return
        try:
            size = self.owner.store.head(key).size
            start, end, status = self._range(size)
            data = b"" if self.command == "HEAD" else self.owner.store.get(key, start=start, end=end)
        except ObjectNotFound:
            self._error(HTTPStatus.NOT_FOUND, "no such object")
            return
        except ValueError as e:
            self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, str(e))
            return
        headers = {"Accept-Ranges": "bytes"}
        if status == HTTPStatus.PARTIAL_CONTENT:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if self.command == "HEAD":
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            return
        self._reply(status, data, headers)

    def _range(self, size: int) -> tuple[int, int, HTTPStatus]:
        raw = self.headers.get("Range")
        if not raw:
            return 0, size, HTTPStatus.OK
        m = _RANGE.fullmatch(raw.strip())
        if m is None:
            raise ValueError("only one 'bytes=a-b' range is supported")
        start = int(m.group(1))
        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
        if start >= size or end <= start:
            raise ValueError(f"range outside the object's {size} bytes")
        return start, end, HTTPStatus.PARTIAL_CONTENT

    def _list(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        prefix, after = query.get("prefix", [""])[0], query.get("after", [""])[0]
        if not self.owner.scope.can_list(prefix):
            self._error(HTTPStatus.FORBIDDEN, "outside what this job may list")
            return
        objects: list[dict[str, Any]] = []
        nxt = ""
        for info in self.owner.store.iter_all(prefix):
            if info.key <= after:
                continue
            if len(objects) == LIST_PAGE:
                nxt = str(objects[-1]["key"])
                break
            objects.append({"key": info.key, "size": info.size})
        self._reply(HTTPStatus.OK, json.dumps({"objects": objects, "next": nxt}).encode(),
                    {"Content-Type": "application/json"})

    def do_PUT(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        key = self._key()
        if key is None:
            return
        if not self.owner.scope.can_write(key):
            self._error(HTTPStatus.FORBIDDEN, "outside what this job may write")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isascii() or not length.isdigit() or int(length) > MAX_PUT_BYTES:
            self._error(HTTPStatus.LENGTH_REQUIRED, f"Content-Length up to {MAX_PUT_BYTES} bytes is required")
            return
        fd, tmp = tempfile.mkstemp(prefix="pylon-proxy-")
        try:
            with os.fdopen(fd, "wb") as f:
                _copy(self.rfile, f, int(length))
            self.owner.store.put_file(key, tmp)
        except ConnectionError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
            return
        finally:
            os.unlink(tmp)
        self._reply(HTTPStatus.CREATED)


def _copy(src: Any, dst: Any, length: int) -> None:
    left = length
    while left:
        chunk = src.read(min(left, _COPY_CHUNK))
        if not chunk:
            raise ConnectionError("the request body ended early")
        dst.write(chunk)
        left -= len(chunk)

