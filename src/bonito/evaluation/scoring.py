"""A target model's answers, in batches, on CPU or CUDA: ranked classification (the summed
log-probability of each choice's tokens after the prompt, the prompt read once for all its
choices) and greedy generation of short answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bonito.models import cache_keyword

Ids = list[int]
Progress = Callable[[int], None] | None
"""Called after each batch with the number of prompts it held."""


def best_choice(scores: Sequence[float]) -> int:
    """Index of the highest score; a tie goes to the lowest index."""
    return list(scores).index(max(scores))


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in groups of `batch_size`, longest first, so a batch holds similar lengths."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad(rows: Sequence[Ids], pad_id: int, device: torch.device, left: bool):
    """Token ids and attention mask of rows padded to the longest, on the left or the right."""
    width = max(map(len, rows))
    ids, mask = [], []
    for row in rows:
        filler = [pad_id] * (width - len(row))
        ids.append(filler + row if left else row + filler)
        ones, zeros = [1] * len(row), [0] * len(filler)
        mask.append(zeros + ones if left else ones + zeros)
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def score_choices(
    model: torch.nn.Module,
    prompts: Sequence[Ids],
    choices: Sequence[Sequence[Ids]],
    *,
    pad_id: int,
    batch_size: int = 8,
    progress: Progress = None,
) -> list[list[float]]:
    """For each prompt, the sum of the log-probabilities of each of its choices' tokens following
    it. Prompts go `batch_size` at a time, longest first, left-padded, through one forward pass;
    their choices (but the last tokens) through a second one that continues each prompt's
    key/value cache, needed only when a choice has more than one token."""
    scores: list[list[float]] = [[] for _ in prompts]
    for batch in length_batches([len(p) for p in prompts], batch_size):
        rows = score_batch(model, [prompts[i] for i in batch], [choices[i] for i in batch], pad_id)
        for index, row in zip(batch, rows, strict=True):
            scores[index] = row
        if progress:
            progress(len(batch))
    return scores


@torch.inference_mode()
def score_batch(
    model: torch.nn.Module, prompts: Sequence[Ids], choices: Sequence[Sequence[Ids]], pad_id: int
) -> list[list[float]]:
    """`score_choices` for one batch."""
    device = next(model.parameters()).device
    ids, mask = pad(prompts, pad_id, device, left=True)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    owner = torch.tensor(
        [row for row, options in enumerate(choices) for _ in options], device=device
    )
    flat = [choice for options in choices for choice in options]
    first = torch.tensor([choice[0] for choice in flat], device=device)
    scores = out.logits[:, -1].float().log_softmax(-1)[owner, first]
    if max(map(len, flat)) > 1:
        keyword = cache_keyword(model)
        cache = getattr(out, keyword)
        cache.batch_select_indices(owner)
        feed, feed_mask = pad([choice[:-1] for choice in flat], pad_id, device, left=False)
        targets, _ = pad([choice[1:] for choice in flat], pad_id, device, left=False)
        logits = model(
            input_ids=feed,
            attention_mask=torch.cat([mask[owner], feed_mask], 1),
            position_ids=mask.sum(1, keepdim=True)[owner]
            + torch.arange(feed.shape[1], device=device),
            **{keyword: cache},
        ).logits
        logprobs = logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
        scores = scores + logprobs.masked_fill(feed_mask == 0, 0).sum(1)
    return [row.tolist() for row in scores.split([len(options) for options in choices])]


@torch.inference_mode()
def generate_greedy(
    model: torch.nn.Module,
    prompts: Sequence[Ids],
    *,
    pad_id: int,
    batch_size: int = 8,
    max_new_tokens: int = 25,
    progress: Progress = None,
) -> list[Ids]:
    """Each prompt's greedy continuation (new token ids, at most `max_new_tokens`, ending at the
    model's end of sequence), `batch_size` prompts at a time, longest first, left-padded."""
    device = next(model.parameters()).device
    outputs: list[Ids] = [[] for _ in prompts]
    for batch in length_batches([len(p) for p in prompts], batch_size):
        ids, mask = pad([prompts[i] for i in batch], pad_id, device, left=True)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
        )
        for index, row in zip(batch, generated[:, ids.shape[1] :].tolist(), strict=True):
            outputs[index] = row
        if progress:
            progress(len(batch))
    return outputs
