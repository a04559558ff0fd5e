"""``pylon.Client``: one object for the whole platform.

Give it any service's address (or an ingress in front of all four); it discovers the others
through PlatformService. Address and token default to ``PYLON_ADDRESS`` / ``PYLON_TOKEN``, then to
the platform a local ``pylon up`` started.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from pylon.admin.v1 import admin_pb2_grpc
from pylon.common.v1 import common_pb2, common_pb2_grpc
from pylon.engine.v1 import engine_pb2
from pylon.errors import PylonError, UnavailableError, from_rpc_error
from pylon.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from pylon.ingest.v1 import ingest_pb2_grpc
from pylon.registry.v1 import registry_pb2_grpc
from pylon.scheduler.v1 import scheduler_pb2_grpc
from pylon.types import Choice, Completion, CompletionChunk

T = TypeVar("T")
DEFAULT_ADDRESS = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def local_platform_state() -> dict[str, Any] | None:
    """What ``pylon up`` recorded under $PYLON_HOME (default ~/.pylon), if it is running."""
    home = os.environ.get("PYLON_HOME") or os.path.join(os.path.expanduser("~"), ".pylon")
    path = os.path.join(home, "state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def new_request_id() -> str:
    return uuid.uuid4().hex


class Client:
    """Entry point of the SDK: ``client.datasets``, ``.jobs``, ``.queues``, ``.models``,
    ``.deployments``, ``.admin`` and ``client.generate(...)``."""

    def __init__(self, address: str | None = None, token: str | None = None, *, timeout: float = 60.0) -> None:
        state = local_platform_state() if not (address and token) else None
        self.address = address or os.environ.get("PYLON_ADDRESS") or (state or {}).get("address") or DEFAULT_ADDRESS
        self.token = token or os.environ.get("PYLON_TOKEN") or (state or {}).get("admin_key") or ""
        self.timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._endpoints: dict[str, str] | None = None
        from pylon.resources import Admin, Datasets, Deployments, Jobs, Models, Queues

        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.queues = Queues(self)
        self.models = Models(self)
        self.deployments = Deployments(self)
        self.admin = Admin(self)

    # -- plumbing -----------------------------------------------------------------------------
    def _channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        return self._channels[address]

    def endpoints(self) -> dict[str, str]:
        """Service name -> address, discovered once from the given address."""
        if self._endpoints is None:
            stub = common_pb2_grpc.PlatformServiceStub(self._channel(self.address))
            resp = self.call(stub.GetPlatform, common_pb2.GetPlatformRequest(), auth=False)
            self._endpoints = {s.service: s.address for s in resp.services}
        return self._endpoints

    def _stub(self, service: str, stub_cls: Callable[[grpc.Channel], T]) -> T:
        address = self.endpoints().get(service)
        if not address:
            raise UnavailableError(f"the platform at {self.address} has no running {service} service")
        return stub_cls(self._channel(address))

    def metadata(self, auth: bool = True) -> list[tuple[str, str]]:
        md = [("x-request-id", uuid.uuid4().hex[:16])]
        if auth and self.token:
            md.append(("authorization", f"Bearer {self.token}"))
        return md

    def call(self, method: Callable[..., Any], request: Any, *, auth: bool = True, timeout: float | None = None) -> Any:
        """Unary call with auth metadata and a deadline; grpc errors become PylonError subclasses."""
        try:
            return method(request, metadata=self.metadata(auth), timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def stream(self, method: Callable[..., Any], request: Any, *, timeout: float | None = None) -> Iterator[Any]:
        """Server-streaming call; errors surface as PylonError while iterating."""
        try:
            yield from method(request, metadata=self.metadata(), timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    @property
    def ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return self._stub("ingest", ingest_pb2_grpc.IngestServiceStub)

    @property
    def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return self._stub("scheduler", scheduler_pb2_grpc.SchedulerServiceStub)

    @property
    def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return self._stub("registry", registry_pb2_grpc.RegistryServiceStub)

    @property
    def gateway(self) -> gateway_pb2_grpc.GatewayServiceStub:
        return self._stub("gateway", gateway_pb2_grpc.GatewayServiceStub)

    @property
    def admin_stub(self) -> admin_pb2_grpc.AdminServiceStub:
        return self._stub("registry", admin_pb2_grpc.AdminServiceStub)

    # -- serving --------------------------------------------------------------------------------
    def generate_stream(self, deployment: str, prompt: str, *, max_tokens: int = 64, temperature: float = 0.8,
                        top_k: int = 0, top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
                        n: int = 1, ignore_eos: bool = False, timeout: float | None = 300,
                        request_id: str | None = None) -> Iterator[CompletionChunk]:
        """Stream the completion(s) piece by piece: text, token ids and which of the ``n``
        completions (``index``); a completion's last piece carries its finish reason and the
        request's token counts. ``deployment`` is a deployment's id or name, or a model as
        "name@alias" (served by a deployment of that version)."""
        req = gateway_pb2.GenerateRequest(prompt=prompt, request_id=request_id or new_request_id(),
                                          sampling=_sampling(max_tokens, temperature, top_k, top_p, stop, seed, n,
                                                             ignore_eos), **_target(deployment))
        for piece in self.stream(self.gateway.Generate, req, timeout=timeout):
            yield CompletionChunk.from_proto(piece)

    def generate(self, deployment: str, prompt: str, *, max_tokens: int = 64, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
                 n: int = 1, ignore_eos: bool = False, timeout: float | None = 300) -> Completion:
        """The whole completion(s) at once, in one call (see ``generate_stream``)."""
        req = gateway_pb2.CompleteRequest(prompt=prompt, request_id=new_request_id(), **_target(deployment),
                                          sampling=_sampling(max_tokens, temperature, top_k, top_p, stop, seed, n,
                                                             ignore_eos))
        return Completion.from_proto(self.call(self.gateway.Complete, req, timeout=timeout))

    def chat_stream(self, deployment: str, messages: list[dict[str, str]], *, max_tokens: int = 64,
                    temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, stop: list[str] | None = None,
                    seed: int | None = None, n: int = 1, timeout: float | None = 300) -> Iterator[CompletionChunk]:
        """Stream the reply to ``messages`` ({"role", "content"} each), rendered by the model's
        chat template on the gateway; pieces as ``generate_stream``'s."""
        req = gateway_pb2.ChatRequest(
            messages=[gateway_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            sampling=_sampling(max_tokens, temperature, top_k, top_p, stop, seed, n, False),
            request_id=new_request_id(), **_target(deployment))
        for piece in self.stream(self.gateway.Chat, req, timeout=timeout):
            yield CompletionChunk.from_proto(piece)

    def chat(self, deployment: str, messages: list[dict[str, str]], **kwargs: Any) -> Completion:
        """The whole reply to ``messages`` (see ``chat_stream`` for the arguments)."""
        return _gather(self.chat_stream(deployment, messages, **kwargs))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deployment_name(name: str) -> str:
    return name if name.startswith("tenants/") else f"tenants/-/deployments/{name}"


def _target(name: str) -> dict[str, str]:
    """A request's deployment or model field for ``name``: a model reference has an "@",
    a "/versions/", a "/latest" or "models:/"; anything else names a deployment."""
    if name.startswith("models:/") or "@" in name or (not name.startswith("tenants/") and "/" in name):
        return {"model": name}
    return {"deployment": _deployment_name(name)}


def _sampling(max_tokens: int, temperature: float, top_k: int, top_p: float, stop: list[str] | None,
              seed: int | None, n: int, ignore_eos: bool) -> engine_pb2.SamplingParams:
    s = engine_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  stop=stop or [], n=n, ignore_eos=ignore_eos)
    if seed is not None:
        s.seed = seed
    return s


def _gather(pieces: Iterator[CompletionChunk]) -> Completion:
    """A stream's pieces as one Completion, every completion by index."""
    choices: dict[int, Choice] = {}
    last: CompletionChunk | None = None
    for p in pieces:
        c = choices.setdefault(p.index, Choice(p.index, "", [], ""))
        c.text += p.text
        c.token_ids += p.token_ids
        c.finish_reason = p.finish_reason or c.finish_reason
        last = p
    if last is None:
        raise PylonError("the gateway closed the stream without a response")
    ordered = [choices[i] for i in sorted(choices)]
    return Completion(ordered[0].text, ordered[0].finish_reason, last.prompt_tokens, last.completion_tokens,
                      last.replica, ordered, deployment=last.deployment)
