"""From requests to judged samples: send prompts to an engine, parse each completion, run the
task-aware checks, and count (a run decides dedup). Used by the Python API and by runs alike."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from bonito.engines import check_sampling
from bonito.engines.base import Completion, Engine, Failure
from bonito.prompt.checks import check_task
from bonito.prompt.format import Task, build_prompt, parse_task
from bonito.prompt.sampling import SamplingParams
from bonito.prompt.task_types import TaskType

CHUNK_SIZE = 1024
"""Requests handed to the engine at once: large enough to batch well, small enough to keep
memory flat."""


@dataclass(frozen=True)
class Request:
    """One prompt to send: a context and the task type to ask for; `key` names it in a run
    (the API uses the row), `seed` makes its samples reproducible whatever else is sent with it,
    `source` says where the context came from."""

    context: str
    task_type: TaskType
    key: Any = None
    seed: int | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return build_prompt(self.context, self.task_type)


@dataclass(frozen=True)
class Sample:
    """One completion of a request and what became of it: `status` is accepted, rejected
    (`reason`: the parse or check that failed) or duplicate (`reason`: the earlier task's id)."""

    request: Request
    index: int
    completion: Completion
    task: Task | None
    status: str
    reason: str | None = None

    @property
    def id(self) -> str:
        return f"{self.request.key}-{self.index}"


def judge(request: Request, index: int, completion: Completion, checks: bool) -> Sample:
    """Parse a completion and, with `checks`, run the task type's checks on the task."""
    parsed = parse_task(completion.text, request.context)
    if not isinstance(parsed, Task):
        return Sample(request, index, completion, None, "rejected", parsed.reason)
    if checks:
        reason = check_task(parsed, request.task_type, request.context, completion.finish_reason)
        if reason:
            return Sample(request, index, completion, parsed, "rejected", reason)
    return Sample(request, index, completion, parsed, "accepted")


@dataclass(frozen=True)
class Group:
    """What one group of finished requests gave: their samples, judged, in request order; the
    requests the engine gave up on, with why; and the seconds the group took."""

    samples: list[Sample]
    failed: list[tuple[Request, str]]
    seconds: float


def generate_samples(
    engine: Engine,
    requests: Iterable[Request],
    sampling: SamplingParams,
    *,
    checks: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> Generator[Group, None, None]:
    """Send requests chunk by chunk; yield each group the engine finishes as it finishes."""
    check_sampling(getattr(engine, "name", ""), sampling)  # an engine of your own may have none
    requests = iter(requests)
    while chunk := list(islice(requests, chunk_size)):
        seeds = [r.seed for r in chunk if r.seed is not None]
        started = time.perf_counter()
        groups = engine.generate(
            [r.prompt for r in chunk], sampling, seeds if len(seeds) == len(chunk) else None
        )
        for group in groups:
            finished = sorted(group, key=lambda item: item[0])
            samples = [
                judge(chunk[i], k, completion, checks)
                for i, completions in finished
                if not isinstance(completions, Failure)
                for k, completion in enumerate(completions)
            ]
            failed = [(chunk[i], c.reason) for i, c in finished if isinstance(c, Failure)]
            now = time.perf_counter()
            yield Group(samples, failed, now - started)
            started = now


@dataclass
class Summary:
    """Counts for the one-screen report at the end of a run; `capped` counts the contexts left
    out by --per-document, `skipped` by reason what was not read or not sent; `failed` counts
    the requests the engine gave up on, and `last_error` says why the last of them failed."""

    documents: int = 0
    contexts: int = 0
    context_tokens: int = 0
    capped: int = 0
    skipped: Counter = field(default_factory=Counter)
    samples: int = 0
    accepted: int = 0
    accepted_by_type: Counter = field(default_factory=Counter)
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: int = 0
    last_error: str | None = None
    output_tokens: int = 0
    elapsed: float = 0.0

    def add(self, group: Group) -> None:
        self.elapsed += group.seconds
        self.failed += len(group.failed)
        if group.failed:
            self.last_error = group.failed[-1][1]
        for sample in group.samples:
            self.samples += 1
            self.output_tokens += sample.completion.completion_tokens
            if sample.status == "accepted":
                self.accepted += 1
                self.accepted_by_type[sample.request.task_type.short] += 1
            elif sample.status == "duplicate":
                self.duplicates += 1
            else:
                self.rejected[sample.reason] += 1

    @property
    def acceptance_rate(self) -> float:
        """The share of samples accepted."""
        return self.accepted / self.samples if self.samples else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.elapsed if self.elapsed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "contexts": self.contexts,
            "context_tokens": self.context_tokens,
            "capped": self.capped,
            "skipped": dict(self.skipped),
            "samples": self.samples,
            "accepted": self.accepted,
            "accepted_by_type": dict(self.accepted_by_type),
            "acceptance_rate": round(self.acceptance_rate, 4),
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
            "failed_requests": self.failed,
            "last_error": self.last_error,
            "output_tokens": self.output_tokens,
            "elapsed_s": round(self.elapsed, 3),
            "output_tokens_per_s": round(self.tokens_per_second, 1),
        }


def counts(counter: Counter) -> str:
    """Counts by reason, commonest first: "empty 3, corrupt 1"."""
    return ", ".join(f"{reason} {count}" for reason, count in counter.most_common())
