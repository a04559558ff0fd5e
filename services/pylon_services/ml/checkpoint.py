"""Checkpoints as a dict of file name -> bytes, so any store (S3, local dir, Ray object) holds them.

Layout:
  ``model.safetensors``   weights (fp32, CPU), no pickle, safe to load from untrusted storage
  ``config.json``         GPTConfig fields plus ``tokenizer`` ("byte") and ``format_version``
  ``trainer_state.json``  step, seed, data position, last loss (trainer-owned, JSON)
  ``optimizer.pt``        optional AdamW state (``torch.save``; loaded with weights_only=True)
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, TensorSpec, serialize
from safetensors.torch import load as load_safetensors

from pylon_services.ml.gpt import GPT, ByteTokenizer, GPTConfig, resolve_device

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
FORMAT_VERSION = 1
MODEL_TYPE = "pylon-tiny-gpt"

CheckpointFiles = dict[str, bytes]


class CheckpointError(ValueError):
    """A checkpoint is missing a file, is corrupt, or does not match what was asked for."""


def checkpoint_files(
    model: GPT,
    cfg: GPTConfig,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> CheckpointFiles:
    """Serialize a model (and optionally its optimizer) plus JSON trainer ``state``."""
    config = {
        **cfg.to_dict(),
        "tokenizer": ByteTokenizer.name,
        "model_type": MODEL_TYPE,
        "format_version": FORMAT_VERSION,
    }
    files = {
        WEIGHTS_FILE: _weights_bytes(model.state_dict()),
        CONFIG_FILE: _json_bytes(config),
        TRAINER_STATE_FILE: _json_bytes(state),
    }
    if optimizer is not None:
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        files[OPTIMIZER_FILE] = buffer.getvalue()
    return files


def load_config(files: CheckpointFiles) -> GPTConfig:
    """The GPTConfig in ``config.json``; rejects unknown tokenizers and format versions."""
    data = _read_json(files, CONFIG_FILE)
    tokenizer = data.pop("tokenizer", None)
    if tokenizer != ByteTokenizer.name:
        raise CheckpointError(f"unsupported tokenizer {tokenizer!r}; this model needs 'byte'")
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"unsupported checkpoint format_version {version!r}")
    data.pop("model_type", None)
    try:
        return GPTConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{CONFIG_FILE}: {exc}") from None


def load_model(
    files: CheckpointFiles, device: str | torch.device = "auto"
) -> tuple[GPT, GPTConfig]:
    """Rebuild the model from a checkpoint on ``device``, in eval mode."""
    cfg = load_config(files)
    try:
        tensors = load_safetensors(_require(files, WEIGHTS_FILE))
    except SafetensorError as exc:
        raise CheckpointError(f"{WEIGHTS_FILE} is corrupt: {exc}") from None
    model = GPT(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{WEIGHTS_FILE} does not match {CONFIG_FILE}: {exc}") from None
    return model.to(resolve_device(device)).eval(), cfg


def load_trainer_state(files: CheckpointFiles) -> dict[str, Any]:
    """The trainer's JSON state (step, seed, data position, ...)."""
    return _read_json(files, TRAINER_STATE_FILE)


def load_optimizer_state(
    files: CheckpointFiles, device: str | torch.device = "cpu"
) -> dict[str, Any] | None:
    """The optimizer ``state_dict`` if the checkpoint has one, tensors mapped to ``device``."""
    blob = files.get(OPTIMIZER_FILE)
    if blob is None:
        return None
    state: dict[str, Any] = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    return state


def write_checkpoint_dir(files: CheckpointFiles, directory: str | os.PathLike[str]) -> Path:
    """Write every file into ``directory`` (created if needed); each file lands atomically."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        _check_name(name)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(tmp, root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return root


def read_checkpoint_dir(directory: str | os.PathLike[str]) -> CheckpointFiles:
    """Read the checkpoint files (top-level regular files, hidden temp files skipped)."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {str(root)!r} does not exist")
    return {
        p.name: p.read_bytes()
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def _weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes without numpy: hand the serializer raw pointers to CPU fp32 copies."""
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous() for name, t in state_dict.items()
    }
    specs = {
        name: TensorSpec(
            dtype="float32",
            shape=list(t.shape),
            data_ptr=t.data_ptr(),
            data_len=t.numel() * t.element_size(),
        )
        for name, t in tensors.items()
    }
    # ``tensors`` stays referenced until serialize returns, keeping every pointer valid.
    return bytes(serialize(specs, metadata={"format": "pt"}))


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode("utf-8")


def _read_json(files: CheckpointFiles, name: str) -> dict[str, Any]:
    try:
        data = json.loads(_require(files, name))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{name} must hold a JSON object")
    return data


def _require(files: CheckpointFiles, name: str) -> bytes:
    try:
        return files[name]
    except KeyError:
        raise CheckpointError(f"checkpoint has no {name}") from None


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise CheckpointError(f"invalid checkpoint file name {name!r}")
