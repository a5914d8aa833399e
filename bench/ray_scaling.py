"""The same run in one process and on a local Ray cluster of 1 and 2 engine actors (the tiny
generator on CPUs): startup (from the command's start to the first results saved: reading,
engine load, and with Ray the cluster and its actors), steady requests/s (first results saved
to last), and each one's ratio to the one process.

    python bench/ray_scaling.py [--contexts 384] [--block 32] [--max-tokens 32]
        [--model models/tiny-bonito]

Each Ray engine gets one CPU, so one torch thread (Ray sets OMP_NUM_THREADS); the one process
is given one torch thread too, to compare engine with engine. On a machine of 2 cores, 2 actors
hold every core. Prints a table and writes
bench/results/ray_scaling.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_facts  # bench/machine.py

import bonito.runs.run
from bonito.engines import load_engine
from bonito.generate.mix import TaskMix
from bonito.prompt.sampling import SamplingParams
from bonito.runs.run import RunConfig, generate_run
from bonito.runs.scale import Cluster

ROOT = Path(__file__).resolve().parents[1]


def passages(folder: Path, count: int) -> Path:
    texts = [json.loads(line)["text"] for line in (ROOT / "examples/passages.jsonl").open()]
    path = folder / "passages.jsonl"
    with path.open("w") as file:
        for i in range(count):
            file.write(json.dumps({"text": f"{texts[i % len(texts)]} (Record {i}.)"}) + "\n")
    return path


def measure(folder: Path, config: RunConfig, load, cluster: Cluster | None) -> dict:
    started = time.time()
    generate_run(folder, config, load, cluster=cluster)
    ended = time.time()
    db = sqlite3.connect(folder / "run.sqlite")
    stamps = sorted(
        row[0] for row in db.execute("SELECT MAX(finished_at) FROM completions GROUP BY request_id")
    )
    db.close()
    at_first = stamps.count(stamps[0])  # saved with the first results, at once
    steady = (len(stamps) - at_first) / (stamps[-1] - stamps[0]) if stamps[-1] > stamps[0] else 0
    return {
        "requests": len(stamps),
        "startup_s": round(stamps[0] - started, 2),
        "steady_requests_per_s": round(steady, 2),
        "total_s": round(ended - started, 2),
        "tasks_jsonl": (folder / "tasks.jsonl").read_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=384)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default=str(ROOT / "models/tiny-bonito"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")
    bonito.runs.run.CHUNK_SIZE = args.block
    torch.set_num_threads(1)
    load = functools.partial(load_engine, args.model, "transformers", device="cpu")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sampling = SamplingParams(max_tokens=args.max_tokens, seed=0)
        mix = TaskMix.parse(["ynqa"])
        config = RunConfig(args.model, (str(passages(tmp, args.contexts)),), mix, 1, sampling)
        rows["one process"] = measure(tmp / "one", config, load, None)
        for engines in (1, 2):
            cluster = Cluster("local", engines=engines, gpus_per_engine=0, cpus_per_engine=1)
            rows[f"ray, {engines} engine(s)"] = measure(
                tmp / f"ray{engines}", config, load, cluster
            )
    base = rows["one process"]
    tasks = {name: row.pop("tasks_jsonl") for name, row in rows.items()}
    identical = len(set(tasks.values())) == 1
    print(f"{'':18} {'startup s':>10} {'steady req/s':>13} {'ratio':>6} {'total s':>8}")
    for name, row in rows.items():
        ratio = row["steady_requests_per_s"] / base["steady_requests_per_s"]
        row["ratio"] = round(ratio, 2)
        print(
            f"{name:18} {row['startup_s']:>10} {row['steady_requests_per_s']:>13} "
            f"{row['ratio']:>6} {row['total_s']:>8}"
        )
    result = {
        "machine": cpu_facts() | {"cores": os.cpu_count(), "load_average": os.getloadavg()},
        "settings": vars(args),
        "identical_tasks_jsonl": identical,
        "runs": rows,
    }
    out = ROOT / "bench/results/ray_scaling.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"identical tasks.jsonl: {identical}; wrote {out}")


if __name__ == "__main__":
    main()
