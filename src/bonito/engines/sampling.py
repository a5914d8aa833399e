"""Token sampling on the device, shared by the in-process backends: top-p by an exponential race
with counter-based (hashed) noise per row, so a row's draw depends only on its seed and step."""

from __future__ import annotations

import torch

from bonito.prompt.sampling import SamplingParams

NUCLEUS_CANDIDATES = 64
"""Top-p first looks among this many most likely tokens and sorts the whole vocabulary only for
rows whose nucleus reaches beyond them."""


def pick_tokens(
    logits: torch.Tensor,
    sampling: SamplingParams,
    seeds: torch.Tensor,
    step: int | torch.Tensor,
    candidates: int | None = NUCLEUS_CANDIDATES,
) -> torch.Tensor:
    """The next token of each row: greedy at temperature 0, else sampled at the temperature from
    the smallest set of tokens whose probability reaches top_p (no top-k), as vLLM samples. A
    row's draw depends only on its logits, its seed and the step (one for all rows, or a column
    of one per row), never on the other rows. `candidates=None` always sorts the whole
    vocabulary, so that nothing is read back to the host (same draws)."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = (logits / sampling.temperature).softmax(-1)
    if sampling.top_p >= 1:
        ranked, order = probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    elif candidates is None:
        ranked, order = probs.sort(-1, descending=True)
    else:
        ranked, order = probs.topk(min(candidates, probs.shape[-1]))
        if (ranked.sum(-1) < sampling.top_p).any():
            ranked, order = probs.sort(-1, descending=True)
    ranked = ranked.masked_fill(ranked.cumsum(-1) - ranked >= sampling.top_p, 0)
    choice = (ranked / race_noise(seeds, step, order)).argmax(-1)
    return order.gather(-1, choice[:, None]).squeeze(-1)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (
    _signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def race_noise(seeds: torch.Tensor, step: int | torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise for each (row, token): sampling picks argmax of p / noise, which draws a
    token in proportion to p. The noise is a hash (SplitMix64, wrapping int64 arithmetic) of the
    row's seed, the step and the token id, so it needs no generator state and is the same
    whatever else is in the batch, like a counter-based generator."""
    x = seeds[:, None] + (step * (1 << 32) + tokens) * _GOLDEN
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    x = x ^ _shift(x, 31)
    uniform = (_shift(x, 11).double() + 0.5) * 2.0**-53
    return -uniform.log()
