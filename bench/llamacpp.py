"""The llama.cpp engine against the transformers engine on this CPU: the same tiny model (its
GGUF written by scripts/convert_to_gguf.py, f32 like the checkpoint), the same prompts from real
passages, the same sampling (greedy; the model card's; the model card's with n=4).

    python bench/llamacpp.py [--passages 128] [--model models/tiny-bonito] [--threads N]

Each engine runs at its default threads (the machine's cores) and at one thread, warmed up
first, one after the other; a machine busy with other work slows multi-threaded runs most (the
load is recorded). Prints a table and writes bench/results/llamacpp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

from bonito import SamplingParams, build_prompt, parse_task
from bonito.engines import generate_all
from bonito.engines.llamacpp import LlamaCppEngine, default_threads
from bonito.engines.transformers import TransformersEngine
from bonito.prompt.format import Task

sys.path.insert(0, str(Path(__file__).parent))
from batching import passages  # noqa: E402  the same passages as the batching bench

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASK_TYPES = ("ynqa", "exqa", "nli", "summarization")
SETTINGS = {
    "greedy": SamplingParams(temperature=0, max_tokens=128),
    "card": SamplingParams(temperature=0.5, top_p=0.95, max_tokens=128, seed=0),
    "card n=4": SamplingParams(n=4, temperature=0.5, top_p=0.95, max_tokens=128, seed=0),
}


def measure(engine, setting: str, prompts: list[str], contexts: list[str]) -> tuple[dict, list]:
    sampling = SETTINGS[setting]
    started = time.perf_counter()
    outputs = generate_all(engine, prompts, sampling)
    elapsed = time.perf_counter() - started
    samples = [(c, context) for o, context in zip(outputs, contexts, strict=True) for c in o]
    tokens = sum(c.completion_tokens for c, _ in samples)
    accepted = sum(isinstance(parse_task(c.text, context), Task) for c, context in samples)
    row = {
        "setting": setting,
        "requests": len(prompts),
        "samples": len(samples),
        "accepted": accepted,
        "prompt_tokens": sum(o[0].prompt_tokens for o in outputs),
        "output_tokens": tokens,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(prompts) / elapsed, 2),
        "output_tokens_per_s": round(tokens / elapsed, 1),
    }
    return row, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=128)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-bonito"))
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (cores)")
    parser.add_argument("--parallel", type=int, default=None, help="llama.cpp n_parallel")
    parser.add_argument("--n-ctx", type=int, default=None, help="llama.cpp KV cache cells")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "llamacpp.json"))
    args = parser.parse_args()
    model = Path(args.model)
    if not (model / "config.json").exists():
        from bonito.train.tiny_model import build_tiny_model

        build_tiny_model(model)
    gguf = model.with_name(model.name + ".gguf")
    if not gguf.exists() or gguf.stat().st_mtime < (model / "model.safetensors").stat().st_mtime:
        script = ROOT / "scripts" / "convert_to_gguf.py"
        subprocess.run([sys.executable, str(script), str(model), str(gguf)], check=True)

    contexts = passages(args.passages)
    kinds = [TASK_TYPES[i % len(TASK_TYPES)] for i in range(len(contexts))]
    prompts = [build_prompt(c, k) for c, k in zip(contexts, kinds, strict=True)]
    options = {"n_threads": args.threads, "n_parallel": args.parallel, "n_ctx": args.n_ctx}
    options = {k: v for k, v in options.items() if v is not None}
    hf = TransformersEngine(str(model), device="cpu")
    llama = LlamaCppEngine(str(gguf), **options)
    llama_one = LlamaCppEngine(str(gguf), **{**options, "n_threads": 1})
    torch_threads = torch.get_num_threads()
    runs = [  # (label, engine, torch threads): each engine at its default threads, and at one
        (f"transformers {torch_threads}t", hf, torch_threads),
        ("transformers 1t", hf, 1),
        (f"llamacpp {llama.n_threads}t", llama, torch_threads),
        ("llamacpp 1t", llama_one, torch_threads),
    ]
    load_before = os.getloadavg()
    rows, greedy = [], {}
    for label, engine, threads in runs:
        torch.set_num_threads(threads)
        generate_all(engine, prompts[:8], SETTINGS["card"])  # warm up
        for setting in SETTINGS:
            row, outputs = measure(engine, setting, prompts, contexts)
            rows.append({"engine": label, **row})
            if setting == "greedy":
                greedy[label] = [o[0].text for o in outputs]
    torch.set_num_threads(torch_threads)
    same = sum(a == b for a, b in zip(greedy[runs[0][0]], greedy[runs[2][0]], strict=True))
    base = {r["setting"]: r for r in rows if r["engine"] == runs[0][0]}
    for row in rows:
        row["speed_vs_transformers"] = round(
            row["output_tokens_per_s"] / base[row["setting"]]["output_tokens_per_s"], 2
        )
    import llama_cpp

    result = {
        "benchmark": "llamacpp",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cores": default_threads(),
        "llamacpp": {
            "n_threads": llama.n_threads,
            "n_parallel": llama.n_parallel,
            "n_ctx": llama.n_ctx,
            "cache_type": "f16",
        },
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llama_cpp_python": llama_cpp.__version__,
        "model": str(model),
        "gguf": str(gguf),
        "passages": len(prompts),
        "greedy_same_text": f"{same}/{len(prompts)}",
        "rows": rows,
    }
    header = (
        f"{'engine':<17}{'setting':<10}{'samples':>8}{'accepted':>9}{'tokens':>8}"
        f"{'seconds':>9}{'req/s':>8}{'tok/s':>9}{'vs hf':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['engine']:<17}{r['setting']:<10}{r['samples']:>8}{r['accepted']:>9}"
            f"{r['output_tokens']:>8}{r['seconds']:>9}{r['requests_per_s']:>8}"
            f"{r['output_tokens_per_s']:>9}{r['speed_vs_transformers']:>7}"
        )
    print(f"greedy: same text from both engines for {same}/{len(prompts)} prompts")
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    llama.close()
    llama_one.close()


if __name__ == "__main__":
    main()
