"""The tiny GPT shared by Pylon's trainers and engines: model, tokenizer, checkpoints."""

from pylon_services.ml.checkpoint import (
    CheckpointError,
    checkpoint_files,
    load_config,
    load_model,
    load_optimizer_state,
    load_trainer_state,
    read_checkpoint_dir,
    write_checkpoint_dir,
)
from pylon_services.ml.gpt import (
    GPT,
    ByteTokenizer,
    GPTConfig,
    KVCache,
    StreamDecoder,
    autocast,
    resolve_device,
)

__all__ = [
    "GPT",
    "ByteTokenizer",
    "CheckpointError",
    "GPTConfig",
    "KVCache",
    "StreamDecoder",
    "autocast",
    "checkpoint_files",
    "load_config",
    "load_model",
    "load_optimizer_state",
    "load_trainer_state",
    "read_checkpoint_dir",
    "resolve_device",
    "write_checkpoint_dir",
]
