"""Our completions from a /v1/completions answer: stop strings cut, finish reasons, token
counts believed only when sane."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bonito.engines.base import Completion, cut_at_stop

MAX_TOKEN_COUNT = 2**31 - 1
"""Largest token count believed in an answer's usage."""


def split_tokens(total: int | None, texts: Sequence[str]) -> list[int]:
    """Per-choice completion tokens from a response's usage, which counts all choices together:
    exact for one choice; for several, the total apportioned by text length (the sum stays
    exact); zeros when the server sent no usage (nothing is guessed)."""
    if total is None:
        return [0] * len(texts)
    if len(texts) == 1:
        return [total]
    weights = [len(t) + 1 for t in texts]
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(texts)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def token_count(value: Any) -> int | None:
    """A token count from an answer's usage: None if absent; ValueError unless a whole number
    from 0 to MAX_TOKEN_COUNT (a server that sends Infinity or 10**30 is not believed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a token count of {value!r}")
    if not (0 <= value <= MAX_TOKEN_COUNT) or value != int(value):
        raise ValueError(f"a token count of {value!r}")
    return int(value)


def completions_from(
    payload: Any,
    stop: Sequence[str],
    n: int | None = None,
    count: Callable[[list[str]], list[int]] | None = None,
) -> list[Completion]:
    """Our completions from a /v1/completions answer with at most `n` choices, their tokens
    counted by `count` if the answer has no usage; ValueError if it is not one."""
    try:
        choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
        texts = [c["text"] for c in choices]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("a choice's text is not a string")
        usage = payload.get("usage") or {}
        prompt_tokens = token_count(usage.get("prompt_tokens")) or 0
        total = token_count(usage.get("completion_tokens"))
        reasons = [c.get("finish_reason") for c in choices]
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"not a completions answer: {type(error).__name__} {error}") from None
    if not choices:
        raise ValueError("an answer with no choices")
    if n is not None and len(choices) > n:
        raise ValueError(f"{len(choices)} choices where {n} were asked for")
    counts = count(texts) if total is None and count else split_tokens(total, texts)
    completions = []
    for text, reason, tokens in zip(texts, reasons, counts, strict=True):
        text, stopped = cut_at_stop(text, stop)  # `transformers serve` keeps the stop string
        ended = "length" if reason in ("length", "max_tokens") and not stopped else "stop"
        completions.append(Completion(text, ended, prompt_tokens, tokens))
    return completions
