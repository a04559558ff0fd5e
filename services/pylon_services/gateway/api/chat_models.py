"""The tokenizer and chat template of a model version, read through the registry once per version
(versions are immutable) and kept for the gateway's chat requests.

The files come from ``RegistryService.DownloadArtifact`` with the caller's key, so a caller
reaches only its own tenant's versions, whatever object store the registry sits on.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from pylon.registry.v1 import registry_pb2
from pylon_services.common.errors import InvalidArgument
from pylon_services.gateway.domain import chat
from pylon_services.runtime.context import forward_metadata
from pylon_services.runtime.peers import PlatformClients

MAX_CACHED_VERSIONS = 16
MAX_FILE_BYTES = 64 << 20  # a tokenizer.json is a few MiB; anything far beyond is not one


@dataclass(frozen=True)
class ChatModel:
    """What a chat request needs of a version: its template, and its tokenizer to encode the
    rendered prompt (without adding special tokens again: the template places them)."""

    template: chat.ChatTemplate | None
    tokenizer: Any  # tokenizers.Tokenizer, imported only when a chat request arrives

    def encode(self, messages: Sequence[chat.ChatMessage], field: str = "messages") -> list[int]:
        if self.template is None:
            raise InvalidArgument.field(field, "the model has no chat template (tokenizer_config.json "
                                               "names none): send a completion request instead")
        text = chat.render(self.template, messages, field)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


class ChatModels:
    """A bounded cache of ``ChatModel`` by version name; one download per version at a time."""

    def __init__(self, clients: PlatformClients) -> None:
        self._c = clients
        self._cache: OrderedDict[str, ChatModel] = OrderedDict()
        self._loading: dict[str, asyncio.Lock] = {}

    async def get(self, version: str, timeout: float,
                  metadata: tuple[tuple[str, str], ...] | None = None) -> ChatModel:
        """The version's chat template and tokenizer, read from the registry as ``metadata`` says
        (default: the caller's key), and kept for the next request."""
        found = self._cache.get(version)
        if found is not None:
            self._cache.move_to_end(version)
            return found
        lock = self._loading.setdefault(version, asyncio.Lock())
        async with lock:
            found = self._cache.get(version)
            if found is None:
                found = await self._load(version, timeout, metadata or forward_metadata())
                self._cache[version] = found
                while len(self._cache) > MAX_CACHED_VERSIONS:
                    self._cache.popitem(last=False)
        self._loading.pop(version, None)
        return found

    async def _load(self, version: str, timeout: float, metadata: tuple[tuple[str, str], ...]) -> ChatModel:
        config = json.loads(await self._file(version, "tokenizer_config.json", timeout, metadata) or b"{}")
        special = json.loads(await self._file(version, "special_tokens_map.json", timeout, metadata) or b"{}")
        tokenizer_json = await self._file(version, "tokenizer.json", timeout, metadata)
        if tokenizer_json is None:
            raise InvalidArgument.field("messages", "the model version has no tokenizer.json to encode a chat with")
        template = chat.template_from_config(config, special) if isinstance(config, dict) else None
        return ChatModel(template, await asyncio.to_thread(_tokenizer, tokenizer_json))

    async def _file(self, version: str, path: str, timeout: float,
                    metadata: tuple[tuple[str, str], ...]) -> bytes | None:
        """A file of the version, or None when it has none."""
        registry = await self._c.registry()
        chunks: list[bytes] = []
        size = 0
        try:
            async for piece in registry.DownloadArtifact(registry_pb2.DownloadArtifactRequest(name=version, path=path),
                                                         metadata=metadata, timeout=timeout):
                size += len(piece.data)
                if size > MAX_FILE_BYTES:
                    raise InvalidArgument.field("messages", f"the model's {path} is over {MAX_FILE_BYTES >> 20} MiB")
                chunks.append(piece.data)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return b"".join(chunks)


def _tokenizer(data: bytes) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(data.decode())
