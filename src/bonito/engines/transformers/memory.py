"""What the key/value cache costs, from which both decoders size their work."""

from __future__ import annotations

from typing import Any

import torch

CPU_TOKEN_BUDGET = 16_384
"""On CPU, compute not memory is the limit: at most this many (prompt + new) tokens per batch
(bench/batching.py on 2 cores: 16k beat 8k and 32k)."""


def kv_shape(config: Any) -> tuple[int, int, int]:
    """Layers, key/value heads and head size of a decoder's attention."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return config.num_hidden_layers, kv_heads, head_dim


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of key/value cache one token takes across all layers."""
    layers, kv_heads, head_dim = kv_shape(config)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
