"""Ranked classification on CPU, batched vs one example at a time: the same tiny model, the same
PubMedQA questions (three choices each) and template, examples per second and agreement.

    python bench/ranked_classification.py [--limit 128] [--batch-size 8] [--model DIR]

Prints a table and writes bench/results/ranked_classification.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import cpu_facts  # bench/machine.py

from bonito.evaluation import load_examples, select_templates, target_prompt
from bonito.evaluation.evaluate import load_target
from bonito.evaluation.prompts import answer_ids, prompt_ids
from bonito.evaluation.scoring import best_choice, score_choices

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pubmedqa" / "pubmedqa_pqal.jsonl"


def measure(name: str, run, examples: int) -> tuple[dict, list[list[float]]]:
    started = time.perf_counter()
    scores = run()
    elapsed = time.perf_counter() - started
    row = {
        "method": name,
        "examples": examples,
        "seconds": round(elapsed, 2),
        "examples_per_s": round(examples / elapsed, 2),
    }
    return row, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-bonito"))
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is not here: the benchmark reads ../shared/data.")
    if not (Path(args.model) / "config.json").exists():
        from bonito.train.tiny_model import build_tiny_model

        build_tiny_model(args.model)
    examples = load_examples(DATA, "ynqa", "pubmedqa", args.limit)
    tokenizer, model = load_target(args.model, device="cpu")
    template = select_templates("ynqa")[0]
    prompts = [
        prompt_ids(target_prompt(template.render(e), tokenizer), tokenizer) for e in examples
    ]
    choices = [[answer_ids(c, tokenizer) for c in e.choices] for e in examples]
    pad = tokenizer.pad_token_id

    def score(batch_size: int):
        return lambda: score_choices(model, prompts, choices, pad_id=pad, batch_size=batch_size)

    score_choices(model, prompts[:2], choices[:2], pad_id=pad)  # warm-up
    one, one_scores = measure("one by one", score(1), len(examples))
    batched, batched_scores = measure(
        f"batched ({args.batch_size})", score(args.batch_size), len(examples)
    )
    same = sum(
        best_choice(a) == best_choice(b) for a, b in zip(one_scores, batched_scores, strict=True)
    )
    difference = max(
        abs(x - y)
        for a, b in zip(one_scores, batched_scores, strict=True)
        for x, y in zip(a, b, strict=True)
    )
    speedup = one["seconds"] / batched["seconds"]
    result = {
        "benchmark": "ranked_classification",
        **cpu_facts(),
        "model": args.model,
        "data": "pubmedqa (PQA-L, first rows), template " + template.name,
        "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        "rows": [one, batched],
        "same_predictions": same,
        "max_score_difference": difference,
        "speedup": round(speedup, 2),
    }
    print(f"{'method':<16}{'examples':>9}{'seconds':>9}{'examples/s':>12}")
    for row in result["rows"]:
        print(
            f"{row['method']:<16}{row['examples']:>9}{row['seconds']:>9}{row['examples_per_s']:>12}"
        )
    print(
        f"speedup {speedup:.1f}x; same prediction on {same}/{len(examples)}; "
        f"largest score difference {difference:.2e}"
    )
    out = ROOT / "bench" / "results" / "ranked_classification.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
