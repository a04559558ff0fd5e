"""Hugging Face model directories: what ``LlamaForCausalLM.from_pretrained`` and vLLM load.

A directory holds ``config.json``, safetensors weights (one ``model.safetensors``, or shards
plus ``model.safetensors.index.json``), the tokenizer files that transformers itself writes
(``tokenizer.json``, ``tokenizer_config.json`` with the chat template, ``special_tokens_map.json``)
and ``generation_config.json``. ``transformers`` is imported only by the writer, since importing
it costs seconds; reading needs just safetensors and tokenizers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer

from pylon_services.ml.llama import Llama, LlamaSpec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"

_WEIGHT_FILE_RE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")
# Tensors HF checkpoints may carry that the model derives itself (old RoPE tables).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# Each turn ends with the tokenizer's eos token, the one special token every Pylon tokenizer has,
# so a model trained on eos-separated documents ends its reply where a turn ends.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def write_hf_model(
    directory: str | os.PathLike[str],
    model: Llama,
    *,
    tokenizer_json: str,
    eos_token: str,
    bos_token: str | None = None,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    generation: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 2 * 1024**3,
) -> list[str]:
    """Write ``model`` and its tokenizer as an HF Llama directory; return the file names, sorted.

    Weights are cast to ``dtype`` and split into shards above ``max_shard_bytes``; stale weight
    files from an earlier write are removed. ``eos_token``/``bos_token`` must be tokens of the
    tokenizer: their ids go into config.json and generation_config.json. ``generation`` adds
    default sampling settings (e.g. temperature) to generation_config.json. A
    ``torch.compile``-wrapped model is written under its original parameter names.
    """
    from huggingface_hub import save_torch_state_dict

    # torch.compile's wrapper prefixes every state-dict name with "_orig_mod."; HF wants none.
    model = getattr(model, "_orig_mod", model)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    if tokenizer.get_vocab_size(with_added_tokens=True) > model.spec.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} "
                         f"tokens but the model's vocab_size is {model.spec.vocab_size}")
    eos_id = _token_id(tokenizer, eos_token, "eos_token")
    bos_id = None if bos_token is None else _token_id(tokenizer, bos_token, "bos_token")
    config = model.spec.to_hf_config(torch_dtype=str(dtype).removeprefix("torch."))
    config.update(eos_token_id=eos_id, bos_token_id=bos_id)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {name: tensor.detach().to("cpu", dtype).contiguous()
             for name, tensor in model.state_dict().items()}
    save_torch_state_dict(state, out, max_shard_size=max_shard_bytes)
    written = {CONFIG_FILE, *(p.name for p in out.iterdir() if _WEIGHT_FILE_RE.fullmatch(p.name))}
    written |= _write_tokenizer(out, tokenizer, eos_token, bos_token, chat_template,
                                model.spec.max_position_embeddings)
    written.add(_write_generation_config(out, eos_id, bos_id, generation or {}))
    return sorted(written)


def _token_id(tokenizer: Tokenizer, token: str, what: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ValueError(f"{what} {token!r} is not a token of the tokenizer")
    return int(found)


def _write_tokenizer(out: Path, tokenizer: Tokenizer, eos_token: str, bos_token: str | None,
                     chat_template: str, max_length: int) -> set[str]:
    """Write the tokenizer through transformers so its own format is what lands on disk."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos_token,
                                      bos_token=bos_token, chat_template=chat_template,
                                      model_max_length=max_length)
    # The chat template stays inside tokenizer_config.json, where every reader looks for it.
    saved = wrapped.save_pretrained(out, save_jinja_files=False)
    config_path = out / TOKENIZER_CONFIG_FILE
    config = json.loads(config_path.read_text())
    # transformers 5 names its own backend class, which transformers 4 (and vLLM on it) lacks;
    # PreTrainedTokenizerFast means the same thing to both.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {"eos_token": eos_token, **({"bos_token": bos_token} if bos_token else {})}
    (out / SPECIAL_TOKENS_FILE).write_text(json.dumps(special, indent=2) + "\n")
    return {Path(p).name for p in saved} | {SPECIAL_TOKENS_FILE}


def _write_generation_config(out: Path, eos_id: int, bos_id: int | None,
                             generation: Mapping[str, Any]) -> str:
    from transformers import GenerationConfig

    settings = {"eos_token_id": eos_id, "bos_token_id": bos_id, **generation}
    (out / GENERATION_CONFIG_FILE).write_text(GenerationConfig(**settings).to_json_string())
    return GENERATION_CONFIG_FILE


def _read_json(directory: str | os.PathLike[str], name: str) -> dict[str, Any]:
    path = Path(directory) / name
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{directory}: no {name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_hf_spec(directory: str | os.PathLike[str]) -> LlamaSpec:
    """The LlamaSpec of an HF directory's config.json; ValueError for what we cannot load."""
    return LlamaSpec.from_hf_config(_read_json(directory, CONFIG_FILE))


def weight_files(directory: str | os.PathLike[str]) -> list[str]:
    """The safetensors files of a directory: the index's shards, else model.safetensors."""
    root = Path(directory)
    if (root / WEIGHTS_INDEX_FILE).exists():
        weight_map = _read_json(root, WEIGHTS_INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{root / WEIGHTS_INDEX_FILE}: no weight_map")
        return sorted(set(map(str, weight_map.values())))
    if (root / WEIGHTS_FILE).exists():
        return [WEIGHTS_FILE]
    raise ValueError(f"{directory}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} "
                     "(only safetensors weights are supported)")


def _tensors(root: Path, files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (name, tensor) of ``files``, read one at a time to bound memory."""
    for name in files:
        path = root / name
        if not path.is_file() or Path(name).name != name:
            raise ValueError(f"{root}: weight file {name!r} is missing")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as reader:
                for key in reader.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    yield key, reader.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ValueError(f"{path}: corrupt safetensors file: {exc}") from None


def load_hf_model(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> Llama:
    """Our Llama from any HF Llama directory (one file or shards, tied or not), in eval mode.

    Strict: a missing, unexpected, duplicate or misshapen tensor raises ValueError naming it.
    The module is built on the meta device and filled in place, so no memory goes to a
    throwaway random init.
    """
    root = Path(directory)
    spec = read_hf_spec(root)
    with torch.device("meta"):
        model = Llama(spec)
    model = model.to(dtype).to_empty(device=device)
    model.init_rope()
    params = dict(model.state_dict(keep_vars=True))
    loaded: set[str] = set()
    for name, tensor in _tensors(root, weight_files(root)):
        if name.endswith(_IGNORED_SUFFIXES) or (spec.tie_word_embeddings
                                                and name == "lm_head.weight"):
            continue  # derived, or the tied duplicate HF itself ignores
        if name not in params:
            raise ValueError(f"{directory}: unexpected tensor {name!r}")
        if name in loaded:
            raise ValueError(f"{directory}: tensor {name!r} appears twice")
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ValueError(f"{directory}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(params[name].shape)}")
        with torch.no_grad():
            params[name].copy_(tensor)
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"{directory}: missing tensor(s) {', '.join(missing)}")
    return model.eval()


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` of a directory's tokenizer.json."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {TOKENIZER_FILE}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"{path}: unreadable tokenizer: {exc}") from None


def eos_token_ids(directory: str | os.PathLike[str]) -> list[int]:
    """The ids that end generation: generation_config.json's, else config.json's (may be [])."""
    root = Path(directory)
    for name in (GENERATION_CONFIG_FILE, CONFIG_FILE):
        if (root / name).exists():
            value = _read_json(root, name).get("eos_token_id")
            if value is not None:
                ids = value if isinstance(value, list) else [value]
                return [int(i) for i in ids]
    return []
