"""A generation run: plan requests from contexts, drive the engine, parse, count."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bonito.chunking import Chunker, Context
from bonito.engines.base import Completion, Engine, Progress
from bonito.errors import BonitoError
from bonito.format import Rejection, Task, build_prompt, parse_task
from bonito.sampling import SamplingParams
from bonito.sources import Document, Skip, read_documents
from bonito.task_types import TaskType

CHUNK_SIZE = 1024
"""Requests handed to the engine at once: large enough to batch well, small enough to write
results as the run goes."""


@dataclass(frozen=True)
class Request:
    """One prompt to send: a context, the task type to ask for, and where the context came from."""

    context: str
    task_type: TaskType
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return build_prompt(self.context, self.task_type)


@dataclass(frozen=True)
class Sample:
    """One completion of a request, and what the parse made of it."""

    request: Request
    index: int
    completion: Completion
    result: Task | Rejection


@dataclass
class Summary:
    """Counts for the one-screen report at the end of a run; `skipped` counts by reason what
    was not read or not sent."""

    documents: int = 0
    contexts: int = 0
    context_tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    samples: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    output_tokens: int = 0
    elapsed: float = 0.0

    def add(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self.samples += 1
            self.output_tokens += sample.completion.completion_tokens
            if isinstance(sample.result, Task):
                self.accepted += 1
            else:
                self.rejected[sample.result.reason] += 1

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.elapsed if self.elapsed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "contexts": self.contexts,
            "context_tokens": self.context_tokens,
            "skipped": dict(self.skipped),
            "samples": self.samples,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "output_tokens": self.output_tokens,
            "elapsed_s": round(self.elapsed, 3),
            "output_tokens_per_s": round(self.tokens_per_second, 1),
        }


def generate_samples(
    engine: Engine,
    requests: Iterable[Request],
    sampling: SamplingParams,
    *,
    summary: Summary | None = None,
    progress: Progress | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[list[Sample]]:
    """Send requests to the engine chunk by chunk; yield each chunk's parsed samples as it ends."""
    requests = iter(requests)
    while chunk := list(islice(requests, chunk_size)):
        started = time.perf_counter()
        completions = engine.generate([r.prompt for r in chunk], sampling, progress)
        samples = [
            Sample(request, index, completion, parse_task(completion.text, request.context))
            for request, outputs in zip(chunk, completions, strict=True)
            for index, completion in enumerate(outputs)
        ]
        if summary is not None:
            summary.elapsed += time.perf_counter() - started
            summary.add(samples)
        yield samples


def plan_requests(contexts: Sequence[Context], task_types: Sequence[TaskType]) -> list[Request]:
    """Every context with every task type, context-major."""
    return [Request(c.text, t, c.provenance()) for c in contexts for t in task_types]


def read_contexts(
    inputs: Sequence[str | Path],
    chunker: Chunker,
    summary: Summary,
    skipped: Path,
    *,
    text_field: str = "text",
    split: str = "train",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    limit: int | None = None,
) -> Iterator[Context]:
    """Contexts from the inputs, read and chunked lazily, at most `limit`. Documents, contexts,
    their tokens and skips by reason are counted in `summary`, and every Skip is written to the
    file `skipped` as a JSON line; BonitoError when no context comes out."""
    if limit is not None and limit < 1:
        raise BonitoError(f"--limit must be at least 1, got {limit}.")
    documents = read_documents(inputs, text_field, split=split, include=include, exclude=exclude)
    first_skip = None
    with skipped.open("w", encoding="utf-8") as file:
        for item in chunker.chunk(_counted(documents, summary)):
            if isinstance(item, Skip):
                first_skip = first_skip or item
                summary.skipped[item.reason] += 1
                file.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
                continue
            summary.contexts += 1
            summary.context_tokens += item.tokens
            yield item
            if summary.contexts == limit:
                return
    if not summary.contexts:
        where = ", ".join(map(str, inputs))
        raise BonitoError(
            f"No contexts from {where}: "
            + (
                f"{summary.skipped.total()} skipped ({counts(summary.skipped)}), e.g. "
                f"{first_skip.source} {first_skip.detail}; see {skipped}."
                if first_skip
                else "there is no text in them."
            )
        )


def _counted(documents: Iterable[Document | Skip], summary: Summary) -> Iterator[Document | Skip]:
    for item in documents:
        if isinstance(item, Document):
            summary.documents += 1
        yield item


def counts(counter: Counter) -> str:
    """Counts by reason, commonest first: "empty 3, corrupt 1"."""
    return ", ".join(f"{reason} {count}" for reason, count in counter.most_common())


def generate_to_folder(
    engine: Engine,
    contexts: Sequence[Context],
    task_types: Sequence[TaskType],
    sampling: SamplingParams,
    output: Path,
    *,
    summary: Summary | None = None,
) -> Summary:
    """Run every context with every task type, appending accepted tasks to output/tasks.jsonl as
    chunks finish, and write output/summary.json at the end; `summary` may hold the counts of
    the reading."""
    output.mkdir(parents=True, exist_ok=True)
    requests = plan_requests(contexts, task_types)
    summary = summary or Summary(contexts=len(contexts))
    meta = {"model": engine.model, "sampling": sampling.to_dict()}
    with (
        (output / "tasks.jsonl").open("w", encoding="utf-8") as file,
        tqdm(total=len(requests), unit="prompt", desc="generating", dynamic_ncols=True) as bar,
    ):
        for samples in generate_samples(
            engine, requests, sampling, summary=summary, progress=bar.update
        ):
            for sample in samples:
                if isinstance(sample.result, Task):
                    file.write(json.dumps(task_record(sample) | meta, ensure_ascii=False) + "\n")
            file.flush()
    config = {"engine": engine.name, "task_types": [t.short for t in task_types], **meta}
    (output / "summary.json").write_text(
        json.dumps({"config": config, "summary": summary.to_dict()}, indent=2) + "\n"
    )
    return summary


def task_record(sample: Sample) -> dict[str, Any]:
    """An accepted task as one JSON record with its provenance."""
    request = sample.request
    return {
        "input": sample.result.input,
        "output": sample.result.output,
        "task_type": request.task_type.short,
        "context": request.context,
        "source": request.source,
        "sample_index": sample.index,
    }
