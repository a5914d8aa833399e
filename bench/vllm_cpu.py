"""Our transformers engine vs vLLM in-process (its CPU backend), same tiny model, same 256
passages, same sampling, same machine, same run. Needs vLLM: run it in .venv-vllm (`make test`
builds it), with bonito's source on the path:

    PYTHONPATH=src .venv-vllm/bin/python bench/vllm_cpu.py [--passages 256] [--model M]

Prints a table and writes bench/results/vllm_cpu.json. Loading is not timed, generating is:
`--rounds` times each, ours first, and the median round reported (the machine's other load moves
single rounds a lot)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from batching import TASK_TYPES, passages  # bench/batching.py
from machine import cpu_facts  # bench/machine.py

from bonito import SamplingParams, build_prompt, parse_task
from bonito.engines import generate_all
from bonito.engines.transformers import TransformersEngine
from bonito.prompt.format import Task

ROOT = Path(__file__).resolve().parents[1]
VLLM_ARGS = {
    "dtype": "float32",
    "max_model_len": 2048,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 1 << 30,
    "enable_chunked_prefill": False,  # vLLM's CPU sampler fails on seeded partial prefills
}


def measure(name: str, engine, prompts, contexts, sampling) -> dict:
    started = time.perf_counter()
    outputs = generate_all(engine, prompts, sampling)
    elapsed = time.perf_counter() - started
    texts = [o[0].text for o in outputs]
    tokens = sum(o[0].completion_tokens for o in outputs)
    accepted = sum(isinstance(parse_task(t, c), Task) for t, c in zip(texts, contexts, strict=True))
    return {
        "engine": name,
        "samples": len(texts),
        "parsed": accepted,
        "output_tokens": tokens,
        "seconds": round(elapsed, 2),
        "output_tokens_per_s": round(tokens / elapsed, 1),
    }


def main() -> None:
    import vllm

    from bonito.engines.vllm import VLLMEngine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-bonito"))
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    contexts = passages(args.passages)
    kinds = [TASK_TYPES[i % len(TASK_TYPES)] for i in range(len(contexts))]
    prompts = [build_prompt(c, k) for c, k in zip(contexts, kinds, strict=True)]
    sampling = SamplingParams(temperature=0.5, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    # vLLM only once ours is done: its idle worker keeps cores busy once it has generated
    engines = {
        "bonito transformers engine": lambda: TransformersEngine(args.model, device="cpu"),
        "vLLM in-process": lambda: VLLMEngine(args.model, **VLLM_ARGS),
    }
    rounds = {}
    for name, load in engines.items():
        engine = load()
        rounds[name] = [
            measure(name, engine, prompts, contexts, sampling) for _ in range(args.rounds)
        ]
    rows = [
        {
            **sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2],
            "rounds_tok_s": [r["output_tokens_per_s"] for r in runs],
        }
        for runs in rounds.values()
    ]
    ratio = rows[1]["output_tokens_per_s"] / rows[0]["output_tokens_per_s"]
    result = {
        "benchmark": "vllm_cpu",
        **cpu_facts(),
        "vllm": vllm.__version__,
        "vllm_args": VLLM_ARGS,
        "model": args.model,
        "passages": len(prompts),
        "sampling": {"temperature": 0.5, "top_p": 0.95, "max_tokens": args.max_tokens},
        "rounds": args.rounds,
        "rows": rows,
        "vllm_over_transformers": round(ratio, 2),
    }
    print(f"{'engine':<30}{'samples':>8}{'parsed':>8}{'tokens':>8}{'seconds':>9}{'tok/s':>9}")
    for row in rows:
        print(
            f"{row['engine']:<30}{row['samples']:>8}{row['parsed']:>8}{row['output_tokens']:>8}"
            f"{row['seconds']:>9}{row['output_tokens_per_s']:>9}"
        )
    print(f"vLLM / transformers, output tokens/s: {ratio:.2f}x")
    out = ROOT / "bench" / "results" / "vllm_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
