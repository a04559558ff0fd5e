"""The OpenAI API's request and response bodies, in one place: an OpenAI request's fields become
the engine's ``SamplingParams`` (the same names, vLLM's extensions included), and a relayed
stream becomes OpenAI's objects and chunks. Checking the values is left to the rules the gRPC
path uses (``inference.checked_sampling``); here only types and unsupported features are
refused, each naming the OpenAI field.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pylon.engine.v1 import engine_pb2
from pylon_services.common.errors import FieldViolation, InvalidArgument
from pylon_services.gateway.domain.chat import ChatMessage

FINISH = {engine_pb2.FINISH_REASON_LENGTH: "length", engine_pb2.FINISH_REASON_STOP: "stop",
          engine_pb2.FINISH_REASON_ABORTED: "abort"}
# Fields the OpenAI API has that the gateway does not serve: a request setting one is refused
# rather than served as if it had not.
_UNSUPPORTED = {"logit_bias": "logit biases", "tools": "tool calls", "tool_choice": "tool calls",
                "functions": "function calls", "function_call": "function calls", "suffix": "suffixes",
                "logprobs": "log-probabilities over HTTP (the gRPC API returns them)",
                "top_logprobs": "log-probabilities over HTTP (the gRPC API returns them)",
                "prompt_logprobs": "prompt log-probabilities", "guided_json": "guided decoding",
                "audio": "audio", "modalities": "other modalities than text"}
_NUMBERS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
_INTS = ("max_tokens", "n", "top_k")


@dataclass
class OpenAIRequest:
    """What a /v1/completions or /v1/chat/completions body asks for."""

    model: str
    sampling: engine_pb2.SamplingParams
    prompt: str = ""
    prompt_token_ids: list[int] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def target(model: str) -> tuple[str, str]:
    """(deployment, model) for GatewayService from the OpenAI ``model`` field: a deployment id
    (or full name), or a model reference such as "name@alias"."""
    if model.startswith("tenants/"):
        return model, ""
    if model.startswith("models:/") or "@" in model or "/" in model:
        return "", model
    return f"tenants/-/deployments/{model}", ""


def _bad(name: str, rule: str) -> InvalidArgument:
    return InvalidArgument.field(name, rule)


def _number(body: dict[str, Any], name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, "must be a finite number")
    return float(v)


def _int(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63:
        raise _bad(name, "must be an integer")
    return v


def _sampling(body: dict[str, Any], chat: bool) -> engine_pb2.SamplingParams:
    """OpenAI fields -> SamplingParams. Unset fields keep OpenAI's defaults (temperature 1)."""
    s = engine_pb2.SamplingParams(temperature=1.0)
    for name in _NUMBERS:
        v = _number(body, name)
        if v is not None:
            setattr(s, name, v)
    if chat and body.get("max_completion_tokens") is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    for name in _INTS:
        v = _int(body, name)
        if v is not None:
            if not -(2**31) <= v < 2**31:
                raise _bad(name, "is out of range")
            setattr(s, name, 0 if name == "top_k" and v == -1 else v)  # vLLM's -1: off
            if name in ("max_tokens", "n") and v == 0:
                raise _bad(name, "must be at least 1")
    seed = _int(body, "seed")
    if seed is not None:
        s.seed = seed if seed >= 0 else -1  # a negative seed fails the engines' rule, naming "seed"
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
        raise _bad("stop", "must be a string or a list of strings")
    s.stop.extend(stop or [])
    ids = body.get("stop_token_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(t, int) and 0 <= t < 2**31 for t in ids)):
        raise _bad("stop_token_ids", "must be a list of token ids")
    s.stop_token_ids.extend(ids or [])
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _bad("ignore_eos", "must be true or false")
    s.ignore_eos = ignore_eos
    return s


def _unsupported(body: dict[str, Any]) -> None:
    for name, what in _UNSUPPORTED.items():
        v = body.get(name)
        if v not in (None, False, [], {}, "none", "auto"):
            raise _bad(name, f"this gateway does not serve {what}")
    if body.get("echo"):
        raise _bad("echo", "this gateway does not echo prompts")
    if body.get("best_of") not in (None, 1, body.get("n", 1)):
        raise _bad("best_of", "must equal n (the gateway returns every completion)")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _bad("response_format", "only {\"type\": \"text\"} is served")


def parse(body: Any, chat: bool) -> OpenAIRequest:
    """A request body, type-checked; InvalidArgument naming the first bad field."""
    if not isinstance(body, dict):
        raise _bad("body", "must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "must name a deployment (its id) or a model (name@alias)")
    _unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be true or false")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)):
        raise _bad("stream_options", "must be an object with include_usage true or false")
    if options is not None and not stream:
        raise _bad("stream_options", "is only allowed when stream is true")
    out = OpenAIRequest(model=model, sampling=_sampling(body, chat), stream=stream,
                        include_usage=bool(options and options.get("include_usage")))
    if chat:
        out.messages = _messages(body.get("messages"))
    else:
        out.prompt, out.prompt_token_ids = _prompt(body.get("prompt"))
    return out


def _prompt(p: Any) -> tuple[str, list[int]]:
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        return p, []
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in p):
        return "", list(p)
    raise _bad("prompt", "must be a string, or a list of token ids (one prompt per request)")


def _messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list):
        raise _bad("messages", "must be a list of {role, content} objects")
    out = []
    for n, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{n}]", "must be an object with a role and a content")
        out.append(ChatMessage(m["role"], _content(m.get("content"), f"messages[{n}].content")))
    return out


def _content(c: Any, name: str) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if c is None or isinstance(c, str):
        return c or ""
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    raise _bad(name, "must be a string or a list of text parts")


def openai_field(name: str) -> str:
    """A violation's field as the OpenAI request names it ("sampling.top_p" is "top_p")."""
    if name.startswith("sampling."):
        return name[len("sampling."):]
    return "model" if name in ("deployment", "model") else name


def renamed(bad: list[FieldViolation]) -> list[FieldViolation]:
    return [FieldViolation(openai_field(v.field), v.description) for v in bad]


# -- responses -------------------------------------------------------------------------------------
def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def usage(u: engine_pb2.Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def whole(rid: str, model: str, chat: bool, texts: dict[int, str], finish: dict[int, str],
          u: engine_pb2.Usage) -> dict[str, Any]:
    """A non-streamed answer: every completion, by index."""
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                    "finish_reason": finish.get(i)} for i in sorted(texts)]
    else:
        choices = [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": finish.get(i)}
                   for i in sorted(texts)]
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(u)}


def chunk(rid: str, model: str, chat: bool, choices: list[dict[str, Any]], include_usage: bool,
          u: engine_pb2.Usage | None = None) -> dict[str, Any]:
    """One SSE chunk; with include_usage every chunk has "usage" (null but on the last)."""
    out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": int(time.time()), "model": model, "choices": choices}
    if include_usage:
        out["usage"] = usage(u) if u is not None else None
    return out


def choice_delta(chat: bool, index: int, text: str, finish: str | None, first: bool) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
