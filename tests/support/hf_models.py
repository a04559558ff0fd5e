"""Small Hugging Face causal-LM directories with random weights, built from a config the way a
user's checkpoint looks on disk (``save_pretrained`` plus a ``tokenizer.json``): no weights can
be downloaded here. The tokenizer is a byte-level BPE trained on a fixed text, so multi-byte
characters and spaces behave as in GPT-2's and Llama 3's tokenizers."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

CORPUS = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
          "Größe, naïve café, 東京 and 🚀 rockets: multi-byte text. def main(): return 42\n") * 20
EOS = "<|end|>"
BOS = "<|begin|>"


@functools.cache
def tokenizer_json(vocab_size: int = 384) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    return tok.to_str()


def config_for(arch: str, vocab_size: int = 384, **overrides: Any) -> Any:
    """A 2-layer config of ``arch`` ("llama", "mistral", "qwen2", "gpt2")."""
    import transformers

    common = {"vocab_size": vocab_size, "eos_token_id": 0, "bos_token_id": 1}
    if arch == "gpt2":
        return transformers.GPT2Config(**{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512,
                                          **common, **overrides})
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[arch]
    return cls(**{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": 512, **common, **overrides})


def build_model_dir(directory: Path, arch: str = "llama", *, seed: int = 0, tokenizer: bool = True,
                    **overrides: Any) -> Path:
    """Write a random-init ``arch`` model (and its tokenizer) to ``directory``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_for(arch, **overrides))
    model.save_pretrained(directory)
    if tokenizer:
        (directory / "tokenizer.json").write_text(tokenizer_json())
        (directory / "tokenizer_config.json").write_text(json.dumps(
            {"eos_token": EOS, "bos_token": BOS, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return directory


def trained_format_dir(directory: Path, *, extra_line: str, vocab_size: int, corpus_chars: int, lines: int,
                       hidden_size: int, layers: int) -> str:
    """A directory in the causal-lm trainer's output format (our Llama written by
    ``ml.hf.write_hf_model``, ingest's BPE tokenizer trained on demo text plus ``extra_line``),
    with random weights of a wide init so greedy choices do not hinge on rounding."""
    import torch

    from pylon.demo_corpus import build_corpus
    from pylon_services.ingest.domain.tokenize import EOS_TOKEN, train_tokenizer
    from pylon_services.ml.hf import write_hf_model
    from pylon_services.ml.llama import Llama, preset

    text = [line for line in build_corpus(corpus_chars).splitlines() if line.strip()][:lines]
    tokenizer = train_tokenizer([*text, *[extra_line] * 50], vocab_size=vocab_size)
    spec = preset("tiny", vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden_size,
                  intermediate_size=2 * hidden_size, num_hidden_layers=layers, max_position_embeddings=64,
                  initializer_range=0.5)
    model = Llama(spec)
    model.reset_parameters(torch.Generator().manual_seed(0))
    write_hf_model(directory, model, tokenizer_json=tokenizer.to_str(), eos_token=EOS_TOKEN)
    return str(directory)
