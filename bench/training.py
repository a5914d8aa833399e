"""Generator training throughput on this CPU: `train_generator` (bonito train's path: Trainer,
peft, checkpoints off, held-out checks off) against a bare PyTorch loop doing the same optimizer
steps on the same batches, for LoRA (the recipe: r 64, alpha 4) and full fine-tuning of the tiny
generator on its own training pairs.

    python bench/training.py [--steps 60] [--model models/tiny-bonito]

Tokens are the non-padding tokens of the batches (source and target). `bonito train` groups pairs
of similar length (less padding), the bare loop takes shuffled batches: the ratio is what the
grouping and the Trainer's own overhead come to together. Prints a table and writes
bench/results/training.json. On a GPU, bench/finetune_step.py times one Q-LoRA step of the
bonito-v1 shape (the LoRA alpha, 4 here and 16 there, does not change the cost of a step).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_facts  # bench/machine.py

from bonito.train.generator import train_generator
from bonito.train.tiny_model import load_examples, training_pairs
from bonito.train.trainer import Collator, Recipe, load_base, prepare, tokenize

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(model_path: str, pairs, recipe: Recipe) -> dict[str, float]:
    """The same steps with nothing around them: AdamW, a linear schedule, clipping, and batches
    drawn in the Trainer's order would be no faster, so a seeded shuffle stands in."""
    model, tokenizer = load_base(model_path, recipe)
    model = prepare(model, tokenizer, recipe)
    examples = tokenize(((p.source, p.target) for p in pairs), tokenizer, recipe).items
    random.Random(recipe.seed).shuffle(examples)
    collate = Collator(tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, recipe.max_steps)
    model.train()
    tokens, started, at = 0, time.perf_counter(), 0
    for _ in range(recipe.max_steps):
        for _ in range(recipe.accumulation):
            batch = collate(examples[at : at + recipe.micro_batch_size])
            at = (at + recipe.micro_batch_size) % (len(examples) - recipe.micro_batch_size)
            tokens += int(batch["attention_mask"].sum())
            (model(**batch).loss / recipe.accumulation).backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def with_trainer(model_path: str, pairs, recipe: Recipe) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as output:
        started = time.perf_counter()
        summary = train_generator(pairs, model_path, output, recipe, held_out=0)
        seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "tokens_per_s": summary["tokens_per_second"],
        "first_loss": summary["train_loss"][0][1],
        "last_loss": summary["train_loss"][-1][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-bonito"))
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").exists():
        from bonito.train.tiny_model import build_tiny_model

        build_tiny_model(args.model)
    pairs = training_pairs(load_examples(), random.Random(0))
    base = {"max_steps": args.steps, "logging_steps": 10, "save_steps": 0, "quantize": False}
    recipes = {
        "LoRA r 64 (the recipe)": Recipe(**base),
        "full fine-tuning": Recipe(lora_r=None, learning_rate=1e-4, **base),
    }
    rows = []
    for name, recipe in recipes.items():
        trainer, bare = (
            with_trainer(args.model, pairs, recipe),
            bare_loop(args.model, pairs, recipe),
        )
        ratio = trainer["tokens_per_s"] / bare["tokens_per_s"]
        rows.append({"setup": name, "bonito_train": trainer, "bare_loop": bare, "ratio": ratio})
    result = {
        "benchmark": "training",
        **cpu_facts(),
        "model": args.model,
        "steps": args.steps,
        "batch": "16 pairs a step (4 x 4 accumulation)",
        "rows": rows,
    }
    print(f"{'setup':<26}{'train tok/s':>13}{'bare tok/s':>12}{'ratio':>7}{'loss':>18}")
    for row in rows:
        trainer, bare = row["bonito_train"], row["bare_loop"]
        loss = f"{trainer['first_loss']:.2f} -> {trainer['last_loss']:.2f}"
        print(
            f"{row['setup']:<26}{trainer['tokens_per_s']:>13,.0f}{bare['tokens_per_s']:>12,.0f}"
            f"{row['ratio']:>7.2f}{loss:>18}"
        )
    out = ROOT / "bench" / "results" / "training.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
