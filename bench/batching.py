"""Batched transformers engine vs a per-example `model.generate` loop (how the original's
transformers path worked): same tiny model, same 256 passages, same sampling, on this CPU.

    python bench/batching.py [--passages 256] [--model models/tiny-bonito]

Prints a table and writes bench/results/batching.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import cpu_facts  # bench/machine.py

from bonito import SamplingParams, build_prompt, parse_task
from bonito.engines import generate_all
from bonito.engines.transformers import TransformersEngine
from bonito.prompt.format import Task
from bonito.read.sources import Document, read_documents

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASK_TYPES = ("ynqa", "exqa", "nli", "summarization")


def passages(count: int) -> list[str]:
    """Real passages from the shared data, round-robin over domains; the examples otherwise."""
    files = sorted(SHARED.glob("*/*passages.jsonl")) or [ROOT / "examples" / "passages.jsonl"]
    pools = [[d.text for d in read_documents([f]) if isinstance(d, Document)] for f in files]
    picked, i = [], 0
    while len(picked) < count:
        pool = pools[i % len(pools)]
        picked.append(pool[(i // len(pools)) % len(pool)])
        i += 1
    return picked


def per_example_loop(engine: TransformersEngine, prompts: list[str], sampling: SamplingParams):
    """One `model.generate` call per prompt, no batching."""
    tokenizer, model = engine.tokenizer, engine.lm
    torch.manual_seed(sampling.seed)
    texts, tokens = [], 0
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            max_new_tokens=sampling.max_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[0, inputs.input_ids.shape[1] :]
        tokens += len(new)
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
    return texts, tokens


def measure(name, run, contexts):
    started = time.perf_counter()
    texts, tokens = run()
    elapsed = time.perf_counter() - started
    accepted = sum(isinstance(parse_task(t, c), Task) for t, c in zip(texts, contexts, strict=True))
    return {
        "method": name,
        "samples": len(texts),
        "accepted": accepted,
        "output_tokens": tokens,
        "seconds": round(elapsed, 2),
        "samples_per_s": round(len(texts) / elapsed, 2),
        "output_tokens_per_s": round(tokens / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-bonito"))
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").exists():
        from bonito.train.tiny_model import build_tiny_model

        build_tiny_model(args.model)
    contexts = passages(args.passages)
    kinds = [TASK_TYPES[i % len(TASK_TYPES)] for i in range(len(contexts))]
    prompts = [build_prompt(c, k) for c, k in zip(contexts, kinds, strict=True)]
    sampling = SamplingParams(temperature=0.5, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    engine = TransformersEngine(args.model, device="cpu")

    def batched():
        outputs = generate_all(engine, prompts, sampling)
        return [o[0].text for o in outputs], sum(o[0].completion_tokens for o in outputs)

    rows = [
        measure(
            "per-example model.generate",
            lambda: per_example_loop(engine, prompts, sampling),
            contexts,
        ),
        measure("bonito transformers engine", batched, contexts),
    ]
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    result = {
        "benchmark": "batching",
        **cpu_facts(),
        "model": args.model,
        "passages": len(prompts),
        "max_tokens": args.max_tokens,
        "rows": rows,
        "speedup": round(ratio, 2),
    }
    header = f"{'method':<30}{'samples':>8}{'accepted':>9}{'tokens':>8}{'seconds':>9}{'tok/s':>9}"
    print(header)
    for row in rows:
        print(
            f"{row['method']:<30}{row['samples']:>8}{row['accepted']:>9}{row['output_tokens']:>8}"
            f"{row['seconds']:>9}{row['output_tokens_per_s']:>9}"
        )
    print(f"speedup (wall time, same samples): {ratio:.1f}x")
    out = ROOT / "bench" / "results" / "batching.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
