"""A lean pipelined Redis connection for the scheduler's hottest call: the submit script.

Why not redis-py for it: measured in ``benchmarks/sched_submit_throughput.py`` with the create
step switched off (an uncommitted A/B), redis-py's asyncio path (connection pool, pipeline object,
command packing, reply parsing, retries, and the batching task around them) cost about 180 us of
the API's ~450 us of CPU per submit. Here each call encodes its command once, writes it to one
dedicated connection at once, and its reply resolves its future in order (RESP2 pipelining:
concurrent callers share round trips without a batching task). Everything else keeps using
redis-py; only plain TCP and Unix-socket connections are served (``for_client`` answers None for
TLS, and callers fall back to redis-py).

Semantics match a single redis-py call: an error reply raises ``ResponseError``; a lost
connection fails the calls in flight with redis-py's ``ConnectionError`` (the script ran or not, as with any
client: callers make retries safe with request ids) and the next call reconnects.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

_INCOMPLETE = object()


def encode(args: tuple[Any, ...]) -> bytes:
    """One command as a RESP array of bulk strings (str as UTF-8, int and float by repr)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, (int, float)):
            a = repr(a).encode()
        elif not isinstance(a, (bytes, bytearray, memoryview)):
            raise TypeError(f"cannot send {type(a).__name__} to Redis")
        out.append(b"$%d\r\n" % len(a))
        out.append(bytes(a))
        out.append(b"\r\n")
    return b"".join(out)


def parse(buf: bytearray, pos: int) -> Any:
    """The reply starting at ``pos`` as ``(value, next position)``, or ``_INCOMPLETE`` when the
    buffer does not hold all of it yet. Errors come back as ``ResponseError`` values."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE
    kind, line, nxt = buf[pos], bytes(buf[pos + 1:end]), end + 2
    if kind == 0x2B:  # + simple string
        return line, nxt
    if kind == 0x2D:  # - error
        return ResponseError(line.decode(errors="replace")), nxt
    if kind == 0x3A:  # : integer
        return int(line), nxt
    if kind == 0x24:  # $ bulk string
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return _INCOMPLETE
        return bytes(buf[nxt:nxt + n]), nxt + n + 2
    if kind == 0x2A:  # * array
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            got = parse(buf, nxt)
            if got is _INCOMPLETE:
                return _INCOMPLETE
            item, nxt = got
            items.append(item)
        return items, nxt
    raise RedisConnectionError(f"unexpected reply type {chr(kind)!r} from Redis")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buf = bytearray()
        self.lost: BaseException | None = None
        self.out: list[bytes] = []  # commands of this loop iteration, written together

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while self.waiting:
                got = parse(self.buf, pos)
                if got is _INCOMPLETE:
                    break
                value, pos = got
                fut = self.waiting.popleft()
                if fut.done():
                    continue  # its caller gave up; the reply is dropped in order
                if isinstance(value, ResponseError):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        except RedisConnectionError as e:  # a reply we cannot read: the stream is out of step
            self._fail(e)
            if self.transport is not None:
                self.transport.close()
        del self.buf[:pos]

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost{f': {exc}' if exc else ''}"))

    def _fail(self, error: BaseException) -> None:
        self.lost = self.lost or error
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(error)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        """Queue one encoded command; the commands queued in one loop iteration go out in one
        write (one syscall for a burst of concurrent submits)."""
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("connection to Redis lost")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.waiting.append(fut)
        if not self.out:
            loop.call_soon(self._flush)
        self.out.append(payload)
        return fut

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))


class RespPipe:
    """One dedicated, lazily (re)connected Redis connection; ``await call(*args)`` per command."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str = "", db: int = 0,
                 username: str | None = None, password: str | None = None, connect_timeout_s: float = 5.0) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self._proto: _Protocol | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def for_client(cls, r: aioredis.Redis) -> RespPipe | None:
        """A pipe to the server ``r`` talks to, or None where only redis-py will do (TLS, or a
        connection class this module does not know)."""
        pool = r.connection_pool
        kw = pool.connection_kwargs
        common = {"db": int(kw.get("db") or 0), "username": kw.get("username"), "password": kw.get("password"),
                  "connect_timeout_s": float(kw.get("socket_connect_timeout") or 5.0)}
        if pool.connection_class is UnixDomainSocketConnection:
            return cls(path=kw["path"], **common)
        if pool.connection_class is Connection:
            return cls(host=kw.get("host", "127.0.0.1"), port=int(kw.get("port", 6379)), **common)
        return None

    async def call(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.lost is not None:
            proto = await self._connect()
        return await proto.send(encode(args))

    async def _connect(self) -> _Protocol:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._proto is not None and self._proto.lost is None:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                if self.path:
                    coro = loop.create_unix_connection(_Protocol, self.path)
                else:
                    coro = loop.create_connection(_Protocol, self.host, self.port)
                _, proto = await asyncio.wait_for(coro, self.connect_timeout_s)
            except (TimeoutError, OSError) as e:
                raise RedisConnectionError(f"cannot connect to Redis: {e}") from e
            try:
                if self.password:
                    auth = (self.username, self.password) if self.username else (self.password,)
                    await proto.send(encode((b"AUTH", *auth)))
                if self.db:
                    await proto.send(encode((b"SELECT", self.db)))
            except ResponseError as e:
                if proto.transport is not None:
                    proto.transport.close()
                raise AuthenticationError(str(e)) from e
            self._proto = proto
            return proto

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
