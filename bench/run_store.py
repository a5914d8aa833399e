"""What a run does with each completion, without the engine: parse, task-aware checks, dedup and
the SQLite store, replaying completions recorded from the tiny generator over distinct real
passages. Target: at least 10,000 completions per second on 2 CPU cores, so that a GPU never
waits on the bookkeeping.

    python bench/run_store.py [--completions 20000] [--group 256] [--model models/tiny-bonito]

Records --record completions once (the engine's time is not measured), then replays them in
groups of --group (the size of one engine batch), each completion paired with another passage
so that tasks differ as in a real run. Prints a table and writes bench/results/run_store.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from bonito import SamplingParams, build_prompt
from bonito.engines import Completion, generate_all
from bonito.engines.transformers import TransformersEngine
from bonito.generate.dedup import Deduplicator
from bonito.generate.judge import Request, judge
from bonito.prompt.task_types import resolve_task_type
from bonito.read.sources import Document, read_documents
from bonito.runs.run import decide, saved
from bonito.runs.store import PlannedRequest, RunStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASK_TYPES = ("ynqa", "exqa", "nli", "mcqa", "summarization", "qa")


def passages() -> list[str]:
    files = sorted(SHARED.glob("*/*passages.jsonl")) or [ROOT / "examples" / "passages.jsonl"]
    return [d.text for d in read_documents(files) if isinstance(d, Document)]


def record(model: str, texts: list[str], count: int) -> list[tuple[str, str, Completion]]:
    """(task type, passage, completion) from the tiny generator."""
    engine = TransformersEngine(model, device="cpu")
    kinds = [TASK_TYPES[i % len(TASK_TYPES)] for i in range(count)]
    contexts = [texts[i % len(texts)] for i in range(count)]
    prompts = [build_prompt(c, k) for c, k in zip(contexts, kinds, strict=True)]
    completions = generate_all(engine, prompts, SamplingParams(max_tokens=128, seed=0))
    return [(k, c, o[0]) for k, c, o in zip(kinds, contexts, completions, strict=True)]


def replay(recorded, texts: list[str], count: int, group: int, near: bool) -> dict:
    """Seconds spent judging, deduplicating and saving `count` completions."""
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "run.sqlite")
        contexts = [
            (i, f"d{i}", {"row": i}, f"{i}. {texts[i % len(texts)]}", 100) for i in range(count)
        ]
        kinds = [recorded[i % len(recorded)][0] for i in range(count)]
        store.add_contexts(contexts, [PlannedRequest(i, 0, 0, kinds[i], i) for i in range(count)])
        requests = [
            Request(contexts[i][3], resolve_task_type(kinds[i]), i + 1) for i in range(count)
        ]
        dedup = Deduplicator(near=near)
        spent = {"judge": 0.0, "dedup": 0.0, "store": 0.0}
        statuses: dict[str, int] = {}
        for start in range(0, count, group):
            batch = range(start, min(start + group, count))
            t0 = time.perf_counter()
            samples = [judge(requests[i], 0, recorded[i % len(recorded)][2], True) for i in batch]
            t1 = time.perf_counter()
            store.save([saved(s) for s in samples], t1 - t0)
            t2 = time.perf_counter()
            _, duplicates = decide(store, dedup)  # as a run does when a block is done
            t3 = time.perf_counter()
            spent["judge"] += t1 - t0
            spent["store"] += t2 - t1
            spent["dedup"] += t3 - t2
            for sample in samples:
                statuses[sample.status] = statuses.get(sample.status, 0) + 1
            statuses["duplicate"] = statuses.get("duplicate", 0) + duplicates
            statuses["accepted"] = statuses.get("accepted", 0) - duplicates
        store.close()
    total = sum(spent.values())
    return {
        "dedup": "exact + near" if near else "exact",
        "completions": count,
        "seconds": round(total, 3),
        "completions_per_s": round(count / total),
        "seconds_by_part": {k: round(v, 3) for k, v in spent.items()},
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=20_000)
    parser.add_argument("--record", type=int, default=600)
    parser.add_argument("--group", type=int, default=256)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-bonito"))
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").exists():
        from bonito.train.tiny_model import build_tiny_model

        build_tiny_model(args.model)
    texts = passages()
    recorded = record(args.model, texts, args.record)
    rows = [replay(recorded, texts, args.completions, args.group, near) for near in (False, True)]
    print(f"{'dedup':<14}{'completions':>12}{'seconds':>9}{'per s':>9}   judge / dedup / store s")
    for row in rows:
        parts = " / ".join(f"{v:.2f}" for v in row["seconds_by_part"].values())
        print(
            f"{row['dedup']:<14}{row['completions']:>12}{row['seconds']:>9}"
            f"{row['completions_per_s']:>9}   {parts}"
        )
    result = {
        "benchmark": "run_store",
        "cpu": platform.processor() or platform.machine(),
        "recorded_completions": args.record,
        "group": args.group,
        "rows": rows,
        "target_completions_per_s": 10_000,
    }
    out = ROOT / "bench" / "results" / "run_store.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
