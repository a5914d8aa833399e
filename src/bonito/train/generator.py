"""Training a bonito generator on ctga pairs (`bonito train`): the model-card recipe on a base
model, with a held-out slice of the pairs checked at every evaluation by what matters for a
generator: do its greedy completions parse, and do their instructions hold the passage?"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase, TrainerCallback

from bonito.engines import generate_all
from bonito.engines.transformers import TransformersEngine
from bonito.errors import BonitoError
from bonito.prompt.format import CONTEXT, PIPE, PLACEHOLDER, TASK, Task, parse_task
from bonito.prompt.sampling import SamplingParams
from bonito.prompt.task_types import TaskType, resolve_task_type, save_task_types
from bonito.train.ctga import TrainingPair
from bonito.train.recipe import GENERATOR_RECIPE
from bonito.train.trainer import (
    EVALUATIONS_FILE,
    SUMMARY_FILE,
    Recipe,
    TrainingSummary,
    check_config,
    fine_tune,
    fingerprint,
    load_base,
    merge,
    prepare,
    tokenize,
    write_json,
    write_model_card,
)


def split_held_out(
    pairs: Sequence[TrainingPair], count: int, seed: int
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """(train, held out): `count` pairs (at most a tenth) held out, taken in turn from each task
    type after a seeded shuffle so that every type is represented."""
    count = min(count, len(pairs) // 10)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    by_type: dict[str, list[int]] = defaultdict(list)
    for index in order:
        by_type[pairs[index].task_type].append(index)
    queues = [by_type[name] for name in sorted(by_type)]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    held = set(chosen)
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(chosen)]


def passage_of(prompt: str) -> str:
    """The passage inside a bonito prompt."""
    return prompt.split(f"\n{CONTEXT}\n", 1)[1].rsplit(f"\n{TASK}\n", 1)[0]


def greedy_completions(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
) -> list[str]:
    """Greedy completions of the prompts by the model being trained, through the generation
    engine (BOS added as for any generator)."""
    engine = TransformersEngine.from_model(model, tokenizer, decoder="dynamic")
    greedy = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    return [samples[0].text for samples in generate_all(engine, prompts, greedy)]


def generator_scores(
    pairs: Sequence[TrainingPair], completions: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per task type and overall: the share of completions that parse, and the share whose
    instruction holds the `{{context}}` placeholder or the passage itself."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for pair, text in zip(pairs, completions, strict=True):
        passage = passage_of(pair.source)
        parsed = isinstance(parse_task(text, passage), Task)
        instruction = text.split(PIPE, 1)[0]
        grounded = parsed and (PLACEHOLDER in instruction or passage.strip() in instruction)
        for key in (pair.task_type, "all"):
            counts[key].update(n=1, parsed=parsed, grounded=grounded)
    return {
        key: {
            "parse_rate": round(c["parsed"] / c["n"], 4),
            "placeholder_rate": round(c["grounded"] / c["n"], 4),
            "n": c["n"],
        }
        for key, c in counts.items()
    }


class GeneratorChecks(TrainerCallback):
    """At each evaluation: greedy completions of the held-out prompts, scored by
    `generator_scores`; each result is printed and appended to evaluations.jsonl."""

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        tokenizer: PreTrainedTokenizerBase,
        output: Path,
        max_new_tokens: int,
    ) -> None:
        self.pairs, self.tokenizer, self.max_new_tokens = pairs, tokenizer, max_new_tokens
        self.path = output / EVALUATIONS_FILE
        self.last: dict[str, Any] | None = None

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        training = model.training
        model.eval()
        try:
            texts = greedy_completions(
                model, self.tokenizer, [p.source for p in self.pairs], self.max_new_tokens
            )
        finally:
            model.train(training)
        scores = generator_scores(self.pairs, texts)
        self.last = {"step": state.global_step, "eval_loss": (metrics or {}).get("eval_loss")}
        self.last["generations"] = scores
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(self.last) + "\n")
        overall = scores["all"]
        tqdm.write(
            f"held out at step {state.global_step}: loss {self.last['eval_loss']:.4f}, "
            f"parse {overall['parse_rate']:.0%}, passage in instruction "
            f"{overall['placeholder_rate']:.0%} ({overall['n']} greedy generations)"
        )


def pair_task_types(pairs: Sequence[TrainingPair]) -> list[TaskType]:
    """The task types the pairs use, each known (built in or registered), in first-seen order."""
    kinds: dict[str, TaskType] = {}
    for name in dict.fromkeys(pair.task_type for pair in pairs):
        try:
            kinds[name] = resolve_task_type(name)
        except BonitoError as error:
            raise BonitoError(
                f"The pairs use the task type '{name}', which is not known: declare it in a "
                "task types file and load it with load_task_types (--task-types)."
            ) from error
    return list(kinds.values())


def check_options(
    recipe: Recipe, held_out: int, eval_generations: int, eval_max_tokens: int, merged: bool
) -> None:
    """Refuse held-out options out of range, and `merged` with full fine-tuning."""
    for name, value, least in (
        ("held_out", held_out, 0),
        ("eval_generations", eval_generations, 0),
        ("eval_max_tokens", eval_max_tokens, 1),
    ):
        if value < least:
            flag = "--" + name.replace("_", "-")
            raise BonitoError(f"{name} ({flag}) must be at least {least}, got {value}.")
    if merged and recipe.lora_r is None:
        raise BonitoError(
            "merged (--merged) folds LoRA adapters into their base, and a full fine-tuning, "
            "lora_r None (--full), trains every weight (no adapters: the output holds the "
            "whole model already); drop one of them."
        )


def train_generator(
    pairs: Sequence[TrainingPair],
    base_model: str,
    output: str | Path,
    recipe: Recipe | None = None,
    *,
    held_out: int = 200,
    eval_generations: int = 64,
    eval_max_tokens: int = 256,
    merged: bool = False,
    overwrite: bool = False,
    data: str | None = None,
    before_training: Callable[[torch.nn.Module], None] | None = None,
) -> TrainingSummary:
    """Fine-tune `base_model` into a bonito generator on the pairs with the recipe and save it
    (the adapter or whole model, the tokenizer, the declarations of non-built-in task types,
    the settings, a summary and a model card naming `data`, where the pairs came from) in
    `output`; `merged` also saves the adapter folded into its base in output/merged;
    `before_training` is called on the model about to be trained (the tiny generator keeps its
    hand-set circuit there). The same call on a folder holding checkpoints of the same training
    resumes it. Returns the summary."""
    output, recipe = Path(output), recipe or GENERATOR_RECIPE
    check_options(recipe, held_out, eval_generations, eval_max_tokens, merged)
    kinds = pair_task_types(pairs)
    train_pairs, held_pairs = split_held_out(pairs, held_out, recipe.seed)
    config = {
        "base_model": base_model,
        "recipe": asdict(recipe),
        "pairs": {"count": len(pairs), "blake2b": fingerprint((p.source, p.target) for p in pairs)},
        "held_out": len(held_pairs),
        "eval_generations": eval_generations,
        "eval_max_tokens": eval_max_tokens,
    }
    check_config(output, config, overwrite)
    model, tokenizer = load_base(base_model, recipe)
    model = prepare(model, tokenizer, recipe)
    if before_training:
        before_training(model)
    train_examples = tokenize(((p.source, p.target) for p in train_pairs), tokenizer, recipe)
    held_examples = tokenize(((p.source, p.target) for p in held_pairs), tokenizer, recipe)
    checks = GeneratorChecks(held_pairs[:eval_generations], tokenizer, output, eval_max_tokens)
    history = fine_tune(
        model,
        tokenizer,
        train_examples,
        output,
        recipe,
        held_out=held_examples,
        callbacks=[checks] if held_pairs and eval_generations else [],
        description="training the generator",
    )
    save_task_types(kinds, output)
    if merged and recipe.lora_r is not None:
        merge(output, output / "merged")
        save_task_types(kinds, output / "merged")
    summary = TrainingSummary(
        output=str(output),
        pairs={
            "train": len(train_examples.items),
            "held_out": len(held_examples.items),
            "skipped": dict(train_examples.skipped + held_examples.skipped),
            "task_types": dict(Counter(p.task_type for p in pairs)),
        },
        train_tokens=train_examples.tokens,
        **history,
        generations=checks.last["generations"] if checks.last else None,
    )
    write_json(output / SUMMARY_FILE, summary.to_dict())
    generator_card(output, base_model, recipe, summary.to_dict(), data)
    return summary


def generator_card(
    output: Path, base_model: str, recipe: Recipe, summary: dict[str, Any], data: str | None
) -> None:
    """The generator's model card: what it does, the pairs by task type, the held-out checks."""
    pairs, scores = summary["pairs"], (summary["generations"] or {}).get("all")
    kinds = sorted(pairs["task_types"].items(), key=lambda item: (-item[1], item[0]))
    lines = [
        f"{sum(pairs['task_types'].values())} ctga pairs"
        + (f" from `{data}`" if data else "")
        + f": {pairs['train']} trained on, {pairs['held_out']} held out, skipped "
        + (json.dumps(pairs["skipped"]) if pairs["skipped"] else "none")
        + ".",
        "",
        "| task type | pairs |",
        "|---|---:|",
        *(f"| {name} | {count} |" for name, count in kinds),
    ]
    if scores:
        lines += [
            "",
            f"On {scores['n']} held-out prompts at the end, {scores['parse_rate']:.0%} of its "
            f"greedy completions parse and {scores['placeholder_rate']:.0%} hold the passage.",
        ]
    short = resolve_task_type(kinds[0][0]).short if kinds else "TASK_TYPE"
    write_model_card(
        output,
        base_model,
        recipe,
        summary,
        about="A bonito generator: given an unannotated passage and a task type, it writes an "
        "instruction-tuning task about the passage (an instruction holding the passage, and its "
        "answer). Trained with `bonito train`.",
        data=lines,
        use=f"bonito generate DOCUMENTS -t {short} --model {output} -o RUN_FOLDER",
    )
