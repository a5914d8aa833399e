"""Causal-LM fine-tuning on (source, target) text pairs with the loss on the target tokens only,
as bonito-v1 was trained: BOS + source + target + EOS, labels -100 on BOS, source and padding."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

IGNORE_INDEX = -100
Model = TypeVar("Model", bound=torch.nn.Module)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> None:
    """Give the tokenizer a `<pad>` token if it has none, growing the embeddings to match."""
    if tokenizer.pad_token_id is not None:
        return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def build_example(
    source: str,
    target: str,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """Input ids and labels for one pair. Source and target are tokenized separately so the
    boundary is exact; over-long parts keep their beginning (a cut target loses its EOS)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    source_ids = bos + tokenizer(source, add_special_tokens=False).input_ids
    target_ids = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    source_ids = source_ids[:max_source_length]
    target_ids = target_ids[:max_target_length]
    return source_ids + target_ids, [IGNORE_INDEX] * len(source_ids) + target_ids


def collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padding gets attention 0 and label -100."""
    width = max(len(ids) for ids, _ in examples)
    ids, labels, mask = [], [], []
    for example_ids, example_labels in examples:
        pad = width - len(example_ids)
        ids.append(example_ids + [pad_token_id] * pad)
        labels.append(example_labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(example_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }


def target_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (target) tokens. Logits are computed only
    from the first position that predicts a target token on (`logits_to_keep`), which saves the
    output layer's time and memory on long sources."""
    labels = batch["labels"]
    first = max(1, int((labels != IGNORE_INDEX).any(dim=0).nonzero()[0]))
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=labels.shape[1] - first + 1,
    ).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1),
        labels[:, first:].flatten(),
        ignore_index=IGNORE_INDEX,
    )


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, window: int = 64
) -> list[list[int]]:
    """Shuffled batches of similar-length examples (less padding): shuffle, sort within windows
    of `window` batches, then shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * window
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def train(
    pairs: Iterable[tuple[str, str]],
    model: Model,
    tokenizer: PreTrainedTokenizerBase,
    *,
    epochs: float = 1.0,
    lr: float = 1e-4,
    batch_size: int = 16,
    gradient_accumulation: int = 1,
    max_source_length: int = 2048,
    max_target_length: int = 2048,
    weight_decay: float = 0.0,
    max_grad_norm: float = 0.3,
    warmup_steps: int = 0,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> Model:
    """Fine-tune `model` (any causal LM, or a PEFT-wrapped one) in place on (source, target)
    pairs with AdamW, a linear schedule to 0 and grad-norm clipping; returns it in eval mode.

    An optimizer step sees `batch_size * gradient_accumulation` pairs; `epochs` may be
    fractional. Batches go to the device of the model's first parameter. `progress(step,
    total_steps, loss)` is called after each optimizer step.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    ensure_pad_token(tokenizer, model)
    examples = [
        build_example(source, target, tokenizer, max_source_length, max_target_length)
        for source, target in pairs
    ]
    if not examples:
        raise ValueError("train() needs at least one (source, target) pair.")
    micro_batches_per_epoch = -(-len(examples) // batch_size)
    total_steps = max(1, round(epochs * micro_batches_per_epoch / gradient_accumulation))

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    lengths = [len(ids) for ids, _ in examples]
    micro_batches: list[list[int]] = []

    model.train()
    for step in range(1, total_steps + 1):
        step_loss = 0.0
        for _ in range(gradient_accumulation):
            if not micro_batches:
                micro_batches = length_grouped_batches(lengths, batch_size, rng)
            batch = collate([examples[i] for i in micro_batches.pop()], tokenizer.pad_token_id)
            loss = target_loss(model, {k: v.to(device) for k, v in batch.items()})
            (loss / gradient_accumulation).backward()
            step_loss += loss.item() / gradient_accumulation
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress:
            progress(step, total_steps, step_loss)
    return model.eval()
