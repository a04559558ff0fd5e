"""A small random-init Llama directory for the vLLM tests: a byte-level BPE tokenizer trained on
made-up text (ingest's ``train_tokenizer``) and a 2-layer ``LlamaForCausalLM`` saved beside it.

Only transformers APIs that both the main venv (transformers 5.25) and the vLLM venv (vLLM pins
``transformers<5.20``) have: ``LlamaConfig``, ``LlamaForCausalLM``, ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

from pathlib import Path

from pylon_services.ingest.domain.tokenize import EOS_TOKEN, train_tokenizer

CONTEXT = 512
TEXT = [f"the quick brown fox {i} jumps over the lazy dog number {i % 17}; pack my box with {i % 5} jugs"
        for i in range(600)]


def write_tiny_llama(directory: Path, *, seed: int = 0) -> Path:
    """A Llama (head dim 64, which vLLM's CPU attention supports) that vLLM serves in fp32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = train_tokenizer(iter(TEXT), vocab_size=400)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN).save_pretrained(str(directory))
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT,
        bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False,
        # Wider than the default 0.02: the logits of a random model then differ by more than
        # fp32 rounding, so greedy decoding has one answer on every kernel.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).eval().save_pretrained(str(directory))
    return directory
