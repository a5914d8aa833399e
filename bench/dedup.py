"""Dedup throughput: replays synthetic tasks through Deduplicator in batches of 1,024, as a run
feeds the tasks it accepts.

    python bench/dedup.py [--tasks 200000] [--duplicates 0.1]

Tasks are built from the shared passages as a run would see them: each excerpt of 12-110 words
(a context) gets 1-3 tasks, an instruction template of the kinds bonito writes around it with a
question, and an answer taken from it (20-150 words a task). A share of the tasks are planted
duplicates of earlier ones on the same passage: copies restyled outside the passage (case,
spacing, Unicode forms) or, for a task with 40 words or more of its own, half the time a copy with
one word of the answer changed. Measures tasks per second (wall and
CPU) for exact-only, exact + near, and rebuilding the index after a restart (feeding the kept
tasks again); what was marked; and the memory the index holds per kept task (traced over the
first 100,000 tasks). Prints the figures and writes bench/results/dedup.json. Dedup runs on one
thread: run it on an otherwise idle machine, or read the CPU figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bonito.generate.dedup import Deduplicator
from bonito.read.sources import Document, read_documents

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BATCH = 1024
MEMORY_TASKS = 100_000
MODES = (("exact only", False), ("exact + near", True))
TEMPLATES = (
    "Read the passage and answer the question.\n\n{passage}\n\nQuestion: {question}",
    "{passage}\n\nBased on the text above, {question}",
    "Answer using only the context below.\nContext: {passage}\nQ: {question}\nA:",
    "Passage: {passage}\n\nIs the following statement true? {question}",
    "Summarize this in one sentence:\n{passage}",
    'Given the excerpt "{passage}", {question}',
)
QUESTIONS = (
    "what does the passage say about {a} {b}?",
    "why is {a} mentioned?",
    "who or what is described as {a} {b}?",
    "the text states that {a} {b} {c}.",
)


def passages() -> list[list[str]]:
    """The shared passages (or the examples), as words."""
    files = sorted(SHARED.glob("*/*passages.jsonl")) or [ROOT / "examples" / "passages.jsonl"]
    texts = [d.text for d in read_documents(files) if isinstance(d, Document)]
    return [t.split() for t in texts if len(t.split()) >= 12]


def contexts(rng: random.Random) -> Iterator[list[str]]:
    """Excerpts of 12-110 words, passage after passage, as a run's contexts; after the first
    pass over the passages, each excerpt's words are shuffled so no two passes share shingles."""
    for round in itertools.count():
        for words in passages():
            at = 0
            while at + 12 <= len(words):
                size = rng.randint(12, 110)
                excerpt, at = words[at : at + size], at + size
                if round:
                    rng.shuffle(excerpt)
                yield excerpt


def make_task(rng: random.Random, excerpt: list[str]) -> tuple[str, str]:
    """An (input, output): a template around the excerpt, with an answer from it."""
    a, b, c = (rng.choice(excerpt) for _ in range(3))
    question = rng.choice(QUESTIONS).format(a=a, b=b, c=c)
    instruction = rng.choice(TEMPLATES).format(passage=" ".join(excerpt), question=question)
    start = rng.randrange(len(excerpt))
    return instruction, " ".join(excerpt[start : start + rng.randint(1, 25)])


def restyle(rng: random.Random, text: str) -> str:
    """The same text after normalisation: other case, spacing and Unicode forms."""
    text = text.upper() if rng.random() < 0.5 else text.title()
    return "  " + text.replace(" ", rng.choice(["  ", "\u00a0", " \n"])) + " "


def change_word(rng: random.Random, text: str) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = "zzyzx"
    return " ".join(words)


def around(passage: str, text: str, edit) -> str:
    """`edit` applied to the text outside the passage only: in a run the passage in a task is
    always the context itself."""
    return edit(text.replace(passage, "\0")).replace("\0", passage)


def make_tasks(count: int, duplicates: float) -> tuple[list[tuple[str, str, str, str]], set[str]]:
    """`count` (key, input, output, passage) tasks, 1-3 per context, and the keys of the planted
    duplicates (about `duplicates` of the tasks): a copy of an earlier task on the same passage,
    restyled or, when its own words number 40 or more, half the time with one word changed."""
    rng, tasks, planted = random.Random(0), [], set()
    excerpts = contexts(rng)
    while len(tasks) < count:
        excerpt = next(excerpts)
        for _ in range(rng.randint(1, 3)):
            key = f"t{len(tasks)}"
            if tasks and rng.random() < duplicates:
                _, instruction, answer, passage = rng.choice(tasks)
                own = len(instruction.replace(passage, " ").split()) + len(answer.split())
                if own >= 40 and rng.random() < 0.5:
                    answer = change_word(rng, answer)
                else:
                    instruction = around(passage, instruction, lambda t: restyle(rng, t))
                    answer = restyle(rng, answer)
                planted.add(key)
            else:
                passage = " ".join(excerpt)
                instruction, answer = make_task(rng, excerpt)
            tasks.append((key, instruction, answer, passage))
    return tasks[:count], planted & {task[0] for task in tasks[:count]}


def replay(dedup: Deduplicator, tasks: list[tuple]) -> tuple[float, float, list]:
    """Wall and CPU seconds to feed the tasks in batches, and the answers."""
    answers, wall, cpu = [], time.perf_counter(), time.process_time()
    for i in range(0, len(tasks), BATCH):
        answers += dedup.add_many(tasks[i : i + BATCH])
    return time.perf_counter() - wall, time.process_time() - cpu, answers


def measure(name: str, near: bool, tasks: list, planted: set[str]) -> dict:
    """Replay the tasks, then rebuild a fresh index from the kept ones as a resumed run would."""
    seconds, cpu, answers = replay(Deduplicator(near=near), tasks)
    marked = {task[0] for task, answer in zip(tasks, answers, strict=True) if answer}
    kept = [task for task, answer in zip(tasks, answers, strict=True) if answer is None]
    rebuild, rebuild_cpu, again = replay(Deduplicator(near=near), kept)
    assert not any(again), "rebuilding marked a kept task"
    return {
        "mode": name,
        "marked": len(marked),
        "planted_marked": len(marked & planted),
        "marked_not_planted": len(marked - planted),
        "tasks_per_s": round(len(tasks) / seconds),
        "tasks_per_cpu_s": round(len(tasks) / cpu),
        "rebuild_tasks_per_s": round(len(kept) / rebuild),
        "rebuild_tasks_per_cpu_s": round(len(kept) / rebuild_cpu),
        "bytes_per_kept_task": memory(near, tasks[:MEMORY_TASKS]),
    }


def memory(near: bool, tasks: list) -> int:
    """Bytes the index holds per kept task, traced over a replay (apart from the timed ones)."""
    tracemalloc.start()
    dedup = Deduplicator(near=near)
    _, _, answers = replay(dedup, tasks)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return round(held / answers.count(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--duplicates", type=float, default=0.1)
    args = parser.parse_args()
    tasks, planted = make_tasks(args.tasks, args.duplicates)
    lengths = [len(f"{i} {o}".split()) for _, i, o, _ in tasks]
    rows = [measure(name, near, tasks, planted) for name, near in MODES]
    dedup = Deduplicator()
    result = {
        "benchmark": "dedup",
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tasks": len(tasks),
        "batch": BATCH,
        "words_per_task": {
            "mean": round(float(np.mean(lengths)), 1),
            "min": min(lengths),
            "max": max(lengths),
        },
        "planted_duplicates": len(planted),
        "threshold": dedup.threshold,
        "num_perm": dedup.num_perm,
        "bands": dedup.bands,
        "rows": dedup.rows,
        "results": rows,
    }
    print(
        f"{len(tasks)} tasks of {min(lengths)}-{max(lengths)} words "
        f"({np.mean(lengths):.0f} on average), {len(planted)} planted duplicates"
    )
    for row in rows:
        print(", ".join(f"{name} {value}" for name, value in row.items()))
    out = ROOT / "bench" / "results" / "dedup.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
