"""Grouped-query attention over the slot cache, registered with transformers under
GROUPED_SDPA when a slot decoder is set up."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_SDPA = "bonito_grouped_sdpa"


def grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention for grouped-query attention with a boolean mask, without
    copying key/value heads (transformers' SDPA repeats them when there is a mask, four times
    the cache traffic for Mistral): the query heads that share a key/value head attend as one
    block of queries. Keys are read only as far as the mask reaches. Other masks go to
    transformers' SDPA."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    kv_heads, width = key.shape[1], attention_mask.shape[-1]
    group = heads // kv_heads
    mask = attention_mask[:, :, None].expand(-1, -1, group, -1, -1)
    output = F.scaled_dot_product_attention(
        query.reshape(batch, kv_heads, group * length, dim),
        key[:, :, :width],
        value[:, :, :width],
        attn_mask=mask.reshape(batch, -1, group * length, width),
        scale=scaling,
    )
    return output.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def register_grouped_sdpa() -> None:
    """Make GROUPED_SDPA a name transformers knows (its registries are global: done when a slot
    decoder is set up, not when bonito is imported)."""
    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
