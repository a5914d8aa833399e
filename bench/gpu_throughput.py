"""Generation throughput of the transformers engine's decoders against plain `model.generate`,
measured in the same run (issue #6): a random-weight model of bonito-v1's exact shape
(transformers' MistralConfig defaults, bf16), bonito prompts of 384 tokens, 256 new tokens each,
end of sequence disabled, sampled at top_p 0.95 and temperature 0.5, the requests going through
`generate_samples` as `Bonito.generate_tasks` sends them.

    python bench/gpu_throughput.py                              # one GPU run, every variant
    python bench/gpu_throughput.py --device cpu --scale tiny    # the same code on a small model

One run builds the model, checks the slot decoders against plain `generate` (greedy, token for
token, on a small float32 model on the same device; seeded sampling reproducible and
independent of the batch), then times each variant (a variant that fails is recorded with its
error and the run goes on; once --budget-s has passed the rest are skipped):

- graphs: the slot decoder replaying CUDA graphs (the CUDA default), on every request;
- baseline: `model.generate` at batch 128, on --baseline-requests only (at the issue's
  1,837 tok/s all 1,024 would take 2.4 minutes);
- compiled: slots, the step compiled by torch.compile, then captured, on every request;
- dynamic: the decoder that was the default before (growing cache, no graphs), on fewer;
- static: the slot decoder without graphs (what graphs save), on fewer;
- graphs-256: graphs with 256 slots instead of up to 512.

On an H200 the whole run should take 5 to 7 minutes (a prediction: bench/results/NOTES.md).
Startup (graph capture, compilation) is timed apart and included end to end. Phases (prefill,
decode, sampling) are timed by CUDA events on the device, never making the host wait (host is
the rest of the wall time: the device outside these phases). Prints a
table and writes JSON (bench/results/gpu_throughput.json, or gpu_throughput_cpu.json on CPU)
after every variant, so that a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, MistralConfig

from bonito import SamplingParams, build_prompt
from bonito.engines import generate_all
from bonito.engines.transformers import PhaseTimes, TransformersEngine
from bonito.generate.judge import Request, generate_samples
from bonito.prompt.sampling import derive_seed
from bonito.prompt.task_types import resolve_task_type
from bonito.train.tiny_model import build_tokenizer, load_examples

ROOT = Path(__file__).resolve().parents[1]
TASK_TYPES = ("exqa", "ynqa", "nli", "summarization", "qg", "sentiment")
SMALL = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}
"""The shape of the scaled-down model: the checks' model everywhere, the timed one on CPU."""


@dataclass(frozen=True)
class Scale:
    """The model timed and the size of each variant's workload."""

    config: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.bfloat16
    requests: int = 1024
    prompt_tokens: int = 384
    max_tokens: int = 256
    baseline_batch: int = 128
    baseline_requests: int = 256
    fewer_requests: int = 256
    small_slots: int = 256


SCALES = {
    "full": Scale(),
    "tiny": Scale(
        SMALL,
        torch.float32,
        requests=96,
        prompt_tokens=128,
        max_tokens=32,
        baseline_batch=16,
        baseline_requests=32,
        fewer_requests=32,
        small_slots=16,
    ),
}


def build_model(config: dict, dtype: torch.dtype, vocab: int | None, device: str):
    """A randomly initialised Mistral built directly on the device (MistralConfig defaults
    where `config` says nothing), end of sequence disabled for `generate`."""
    sizes = config | ({"vocab_size": vocab} if vocab else {})
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(MistralConfig(**sizes), dtype=dtype)
    lm.generation_config.eos_token_id = None
    return lm.eval()


@functools.cache
def example_words() -> list[str]:
    """The words of the packaged examples' passages, in order."""
    return " ".join(e["context"] for e in load_examples()).split()


def sized_request(tokenizer, row: int, tokens: int) -> Request:
    """Request `row` as generate_tasks makes it (its own seed), a passage from the packaged
    examples and a task type by row, its prompt as close to `tokens` tokens as whole words
    allow, never over."""
    words = example_words()
    kind = resolve_task_type(TASK_TYPES[row % len(TASK_TYPES)])
    offset = row * 37 % (len(words) - 4 * tokens)

    def length(n: int) -> int:
        context = " ".join(words[offset : offset + n])
        return len(tokenizer(build_prompt(context, kind)).input_ids)

    low, high = 1, 4 * tokens  # the most words whose prompt fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(middle) <= tokens else (low, middle - 1)
    return Request(" ".join(words[offset : offset + low]), kind, row, derive_seed(0, row))


def plain_generate(lm, tokenizer, requests: list[Request], batch: int, sampling) -> dict:
    """`model.generate` batch by batch, sampling as the engine does (no top-k)."""
    torch.manual_seed(0)
    tokens = 0
    for start in range(0, len(requests), batch):
        prompts = [r.prompt for r in requests[start : start + batch]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(lm.device)
        out = lm.generate(
            **inputs,
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            max_new_tokens=sampling.max_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        tokens += (out.shape[1] - inputs.input_ids.shape[1]) * len(prompts)
    return {"samples": len(requests), "output_tokens": tokens, "phases": {}}


def through_engine(engine: TransformersEngine, requests: list[Request], sampling) -> dict:
    """The requests through `generate_samples`, as generate_tasks sends them; phases timed."""
    engine.phases = PhaseTimes(engine.device)
    samples = tokens = accepted = 0
    for group in generate_samples(engine, requests, sampling):
        samples += len(group.samples)
        tokens += sum(s.completion.completion_tokens for s in group.samples)
        accepted += sum(s.status == "accepted" for s in group.samples)
    phases, engine.phases = engine.phases.seconds, None
    return {"samples": samples, "accepted": accepted, "output_tokens": tokens, "phases": phases}


def measure(name: str, requests: int, run: Callable[[], dict], device: str) -> dict:
    """Run one variant and time it; what earlier variants left (slots, graphs, compiled code)
    is released first."""
    gc.collect()
    torch.compiler.reset()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    row = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    phases = {k: round(v, 2) for k, v in row.pop("phases").items()}
    startup = phases.get("startup", 0.0)
    if phases:
        phases["host"] = round(seconds - sum(phases.values()), 2)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {
        "variant": name,
        "requests": requests,
        **row,
        "seconds": round(seconds, 2),
        "startup_s": startup,
        "output_tokens_per_s": round(row["output_tokens"] / seconds, 1),
        "output_tokens_per_s_after_startup": round(row["output_tokens"] / (seconds - startup), 1),
        "samples_per_s": round(row["samples"] / seconds, 2),
        "tasks_per_s": round(row.get("accepted", 0) / seconds, 2),
        "phases_s": phases,
        "peak_memory_gib": None if peak is None else round(peak, 1),
    }


def check_decoders(tokenizer, device: str, decoders: list[str]) -> dict:
    """On a small float32 model on the device: each slot decoder's greedy output equals plain
    `generate`'s, prompt by prompt, token for token (same text, same count; the model's
    vocabulary is the tokenizer's, so every token shows in the text); and seeded sampling
    (graphs on CUDA, static on CPU) gives the same samples again, and the same for a prompt
    alone as in the batch. A check that fails to run records its error."""
    lm = build_model(SMALL, torch.float32, len(tokenizer), device)
    lengths = (24, 40, 56, 72, 88, 104, 30, 66)
    prompts = [sized_request(tokenizer, row, n).prompt for row, n in enumerate(lengths)]
    greedy = SamplingParams(temperature=0, max_tokens=24)
    expected = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        pad = tokenizer.pad_token_id
        out = lm.generate(ids, do_sample=False, max_new_tokens=24, pad_token_id=pad)
        new = out[0, ids.shape[1] :].tolist()
        expected.append([(tokenizer.decode(new, skip_special_tokens=True), len(new))])

    def engine(decoder: str) -> TransformersEngine:
        made = TransformersEngine.from_model(lm, tokenizer, decoder=decoder)
        made.eos_ids = set()
        return made

    def greedy_equals_generate(decoder: str) -> bool:
        outputs = generate_all(engine(decoder), prompts, greedy)
        return [[(c.text, c.completion_tokens) for c in o] for o in outputs] == expected

    sampled = engine("graphs" if device.startswith("cuda") else "static")
    sampling = SamplingParams(n=2, max_tokens=24, seed=1)
    seeds = [derive_seed(1, i) for i in range(len(prompts))]

    def reproducible() -> bool:
        return generate_all(sampled, prompts, sampling) == generate_all(sampled, prompts, sampling)

    def independent_of_batch() -> bool:
        together = generate_all(sampled, prompts, sampling, seeds)
        pairs = zip(prompts, seeds, strict=True)
        return together == [generate_all(sampled, [p], sampling, [s])[0] for p, s in pairs]

    checks = {
        f"{d}_greedy_equals_generate": functools.partial(greedy_equals_generate, d)
        for d in decoders
    }
    checks |= {"sampling_reproducible": reproducible, "sampling_independent": independent_of_batch}
    results = {}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as error:  # a check that cannot run is a result too
            results[name] = f"{type(error).__name__}: {error}"[:300]
    return results


def cpu_name() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    head = (
        f"{'variant':<12}{'requests':>9}{'tokens':>9}{'seconds':>9}{'startup':>8}{'tok/s':>9}"
        f"{'ratio':>7}{'prefill':>8}{'decode':>8}{'sample':>8}{'host':>7}{'GiB':>6}"
    )
    lines = [head]
    for row in rows:
        if "error" in row or "skipped" in row:
            lines.append(f"{row['variant']:<12}  {row.get('error') or row['skipped']}")
            continue
        p = row["phases_s"]
        lines.append(
            f"{row['variant']:<12}{row['requests']:>9}{row['output_tokens']:>9}"
            f"{row['seconds']:>9}{row['startup_s']:>8}{row['output_tokens_per_s']:>9}"
            f"{row.get('ratio', ''):>7}{p.get('prefill', ''):>8}{p.get('decode', ''):>8}"
            f"{p.get('sampling', ''):>8}{p.get('host', ''):>7}{row['peak_memory_gib'] or '':>6}"
        )
    return "\n".join(lines)


def variants(lm, tokenizer, requests: list[Request], sampling, scale: Scale) -> dict:
    """Each timed variant: how many requests it serves, and how to run them."""

    def engine(decoder: str, slots: int | None = None) -> TransformersEngine:
        lm.set_attn_implementation("sdpa")  # the slot decoders set their own
        made = TransformersEngine.from_model(lm, tokenizer, batch_size=slots, decoder=decoder)
        made.eos_ids = set()
        return made

    def through(decoder: str, count: int, slots: int | None = None):
        return count, lambda: through_engine(engine(decoder, slots), requests[:count], sampling)

    def baseline():
        lm.set_attn_implementation("sdpa")
        count = scale.baseline_requests
        return plain_generate(lm, tokenizer, requests[:count], scale.baseline_batch, sampling)

    return {
        "graphs": lambda: through("graphs", len(requests)),
        "baseline": lambda: (scale.baseline_requests, baseline),
        "compiled": lambda: through("compiled", len(requests)),
        "dynamic": lambda: through("dynamic", scale.fewer_requests),
        "static": lambda: through("static", scale.fewer_requests),
        "graphs-256": lambda: through("graphs", len(requests), scale.small_slots),
    }


def run_variants(chosen: dict, result: dict, out: Path, device: str, deadline: float) -> None:
    """Time each variant in turn, writing the results after each; none starts after
    `deadline` (a perf_counter time)."""
    rows = result["rows"] = []
    for name, variant in chosen.items():
        if not device.startswith("cuda") and name.startswith("graphs"):
            rows.append({"variant": name, "skipped": "CUDA graphs need a CUDA device"})
        elif time.perf_counter() > deadline:
            rows.append({"variant": name, "skipped": "past the time budget"})
        else:
            count, run = variant()
            try:
                rows.append(measure(name, count, run, device))
            except Exception as error:  # a failed variant is a result too; the others go on
                rows.append({"variant": name, "error": f"{type(error).__name__}: {error}"[:500]})
        base = next((r for r in rows if r["variant"] == "baseline" and "seconds" in r), None)
        for row in rows:
            if base and "seconds" in row:
                ratio = row["output_tokens_per_s"] / base["output_tokens_per_s"]
                row["ratio"] = round(ratio, 2)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(table(rows[-1:]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--requests", type=int, help="requests for the full-size variants")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no variant after")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--only", help="comma-separated variants to time (default: all)")
    args = parser.parse_args()
    started = time.perf_counter()
    scale, cuda = SCALES[args.scale], args.device.startswith("cuda")
    out = args.json or ROOT / "bench" / "results" / f"gpu_throughput{'' if cuda else '_cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer([e["context"] for e in load_examples()])
    tokenizer.padding_side = "left"
    result = {
        "benchmark": "gpu_throughput",
        "device": torch.cuda.get_device_name(args.device) if cuda else cpu_name(),
        "scale": args.scale,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "command": " ".join(sys.argv),
    }
    decoders = ["static", "graphs", "compiled"] if cuda else ["static", "compiled"]
    result["checks"] = check_decoders(tokenizer, args.device, decoders)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("checks:", json.dumps(result["checks"]), flush=True)

    lm = build_model(scale.config, scale.dtype, None, args.device)
    sampling = SamplingParams(temperature=0.5, top_p=0.95, max_tokens=scale.max_tokens, seed=0)
    count = args.requests or scale.requests
    requests = [sized_request(tokenizer, row, scale.prompt_tokens) for row in range(count)]
    lengths = [len(tokenizer(r.prompt).input_ids) for r in requests]
    result["model"] = {
        "config": scale.config or "MistralConfig()",
        "dtype": str(scale.dtype),
        "parameters": sum(p.numel() for p in lm.parameters()),
    }
    result["workload"] = {
        "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
        "prompt_tokens_min": min(lengths),
        "max_tokens": scale.max_tokens,
        "sampling": sampling.to_dict(),
        "eos": "disabled",
    }
    chosen = variants(lm, tokenizer, requests, sampling, scale)
    if args.only:
        chosen = {name: chosen[name] for name in args.only.split(",")}
    run_variants(chosen, result, out, args.device, started + args.budget_s)
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{table(result['rows'])}")
    print(f"ratio: output tokens/s over model.generate's at batch {scale.baseline_batch}")
    print(f"wrote {out} ({result['seconds']} s in all)")


if __name__ == "__main__":
    main()
