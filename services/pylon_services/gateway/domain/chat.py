"""Chat requests as pure rules: which conversations the gateway accepts, and how a model's chat
template turns one into the prompt text (Hugging Face's own renderer, so a template behaves as
it does in ``tokenizer.apply_chat_template``).

The gateway renders, not the engine: the rendered prompt is what admission counts and what
prefix-aware routing hashes, and the engines then serve chat and completion requests alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pylon_services.common.errors import FieldViolation, InvalidArgument

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_MESSAGES = 256
MAX_CONTENT_BYTES = 64 * 1024
# Special tokens a template may name (``{{ bos_token }}``), as tokenizer_config.json gives them.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    """A model version's template and the special tokens it may use."""

    template: str
    special_tokens: Mapping[str, str]


def message_violations(messages: Sequence[ChatMessage], field: str = "messages") -> list[FieldViolation]:
    """1 to ``MAX_MESSAGES`` messages of a known role, ``MAX_CONTENT_BYTES`` of content in all."""
    if not messages:
        return [FieldViolation(field, "must hold at least one message")]
    if len(messages) > MAX_MESSAGES:
        return [FieldViolation(field, f"at most {MAX_MESSAGES} messages")]
    bad = [FieldViolation(f"{field}[{n}].role", f"must be one of {', '.join(ROLES)}")
           for n, m in enumerate(messages) if m.role not in ROLES]
    if sum(len(m.content.encode()) for m in messages) > MAX_CONTENT_BYTES:
        bad.append(FieldViolation(field, f"the messages' content must be at most {MAX_CONTENT_BYTES >> 10} KiB in all"))
    return bad


def template_from_config(config: Mapping[str, Any], special_map: Mapping[str, Any] | None = None) -> ChatTemplate | None:
    """The chat template of a tokenizer_config.json (and special_tokens_map.json), or None."""
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(template, str) or not template:
        return None
    tokens: dict[str, str] = {}
    for source in (special_map or {}, config):
        for name in SPECIAL_TOKENS:
            value = source.get(name)
            if isinstance(value, dict):  # an AddedToken written out
                value = value.get("content")
            if isinstance(value, str):
                tokens[name] = value
    return ChatTemplate(template, tokens)


def render(template: ChatTemplate, messages: Sequence[ChatMessage], field: str = "messages") -> str:
    """The prompt text for ``messages``, ending with the template's generation prompt.
    ``InvalidArgument`` on ``field`` when the template refuses the conversation (its
    ``raise_exception``, say, for roles out of order)."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    conversation = [{"role": m.role, "content": m.content} for m in messages]
    tokens: dict[str, Any] = dict(template.special_tokens)
    try:
        # (rendered conversations, generation indices), whatever its annotation says
        out: Any = render_jinja_template(conversations=[conversation], chat_template=template.template,
                                         add_generation_prompt=True, **tokens)
        rendered = out[0]
    except TemplateError as e:
        raise InvalidArgument.field(field, f"the model's chat template refused them: {str(e)[:200]}") from None
    return rendered[0]
