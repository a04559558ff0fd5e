"""The causal-lm model presets, in Hugging Face ``LlamaConfig`` names (torch-free: the API checks
trainer configs against them; ``ml/llama.py`` builds the models).

- ``tiny``: trains on a CPU in minutes (the demo).
- ``124m``: GPT-2 small's size and shape (768 wide, 12 layers, 12 heads, tied embeddings):
  124M parameters with GPT-2's 50,257-token vocabulary, for comparisons with llm.c and HF GPT-2.
- ``1b``: Llama 3.2 1B's shape (grouped-query attention, RoPE theta 500,000, tied embeddings;
  without its long-context RoPE scaling): 1.24B parameters with its 128,256-token vocabulary.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 1024, "rope_theta": 10000.0,
             "tie_word_embeddings": True},
    "124m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 12, "max_position_embeddings": 1024, "rope_theta": 10000.0,
             "tie_word_embeddings": True},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0,
           "tie_word_embeddings": True},
}
