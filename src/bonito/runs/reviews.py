"""What a person decided about a run's tasks, kept in the run store's `reviews` table (one row per
action; a task's latest row is its decision, and undo removes the latest row of all), and what
follows from them: the tasks an export writes, and how often the checks were right per task type
(shares with Wilson 95% intervals)."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bonito.runs.store import CANDIDATE, RunStore, task_id

DECISIONS = ("accepted", "rejected")
PASSED = ("accepted", CANDIDATE)
"""Run statuses of tasks that passed the checks (a candidate waits for its dedup)."""
Z95 = 1.959964
REVIEWED = "{reviewed} (kept {kept}, {edited} edited; rejected {rejected}; rescued {rescued})"
"""What people decided, in one line."""


@dataclass(frozen=True)
class Decision:
    """A task's decision: accepted or rejected (with the person's reason), and the instruction
    and answer as the person edited them (None: unchanged)."""

    decision: str
    input: str | None = None
    output: str | None = None
    reason: str | None = None
    at: float = 0.0

    @property
    def edited(self) -> bool:
        return self.input is not None or self.output is not None

    def applied(self, task: dict[str, Any]) -> dict[str, Any]:
        """The task with the person's edits in place."""
        edits = {"input": self.input, "output": self.output}
        return task | {key: value for key, value in edits.items() if value is not None}


def split_id(task: str) -> tuple[int, int]:
    """A task id, "request-sample", as its two numbers; ValueError if it is not one."""
    request, sample = task.split("-")
    return int(request), int(sample)


def decisions(store: RunStore) -> dict[str, Decision]:
    """Every reviewed task's decision, by task id."""
    if not store.has_reviews:
        return {}
    rows = store.db.execute(
        "SELECT request_id, sample, decision, input, output, reason, at FROM decisions"
    )
    return {task_id(r, s): Decision(*rest) for r, s, *rest in rows}


def decide(store: RunStore, task: str, decision: Decision) -> Decision:
    """Save a person's decision on `task` at once; an accept without edits keeps the task's
    earlier edits."""
    request_id, sample = split_id(task)
    with store.transaction():
        if decision.decision == "accepted" and not decision.edited:
            before = decision_of(store, request_id, sample)
            if before is not None:
                decision = Decision("accepted", before.input, before.output)
        decision = Decision(
            decision.decision, decision.input, decision.output, decision.reason, time.time()
        )
        store.db.execute(
            "INSERT INTO reviews (request_id, sample, decision, input, output, reason, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, sample, *vars(decision).values()),
        )
    return decision


def decision_of(store: RunStore, request_id: int, sample: int) -> Decision | None:
    row = store.db.execute(
        "SELECT decision, input, output, reason, at FROM decisions "
        "WHERE request_id = ? AND sample = ?",
        (request_id, sample),
    ).fetchone()
    return Decision(*row) if row else None


def undo(store: RunStore) -> str | None:
    """Remove the latest action of all; the id of the task it was about, None if none is left."""
    with store.transaction():
        row = store.db.execute(
            "SELECT id, request_id, sample FROM reviews ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        store.db.execute("DELETE FROM reviews WHERE id = ?", (row[0],))
    return task_id(row[1], row[2])


def reviewed_tasks(
    accepted: Iterable[dict[str, Any]],
    others: Iterable[dict[str, Any]],
    decided: Mapping[str, Decision],
    reviewed_only: bool = False,
) -> Iterator[dict[str, Any]]:
    """The tasks an export writes, in run order: the run's accepted tasks (or, `reviewed_only`,
    those a person accepted) less those a person rejected, and the rejected or duplicate ones
    (`others`) a person rescued; with the person's edits."""
    rescued = (task for task in others if task["id"] in decided) if decided else ()
    order = lambda task: (task["request_id"], task["sample_index"])  # noqa: E731
    for task in heapq.merge(accepted, rescued, key=order):
        decision = decided.get(task["id"])
        if decision is None:
            if not reviewed_only and task["status"] == "accepted":
                yield task
        elif decision.decision == "accepted":
            yield decision.applied(task)


def wilson(part: int, whole: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of the share `part`/`whole` (95% by default)."""
    if not whole:
        return 0.0, 1.0
    share, z2 = part / whole, z * z
    centre = (share + z2 / (2 * whole)) / (1 + z2 / whole)
    half = z * math.sqrt(share * (1 - share) / whole + z2 / (4 * whole * whole)) / (1 + z2 / whole)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Share:
    """`part` of `whole` reviewed tasks, with its Wilson 95% interval."""

    part: int = 0
    whole: int = 0

    def __str__(self) -> str:
        if not self.whole:
            return "none reviewed"
        low, high = wilson(self.part, self.whole)
        return (
            f"{self.part}/{self.whole} = {self.part / self.whole:.0%} "
            f"(95% interval {low:.0%}-{high:.0%})"
        )

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson(self.part, self.whole)
        return {"part": self.part, "whole": self.whole, "low": low, "high": high}


@dataclass
class Tally:
    """What people decided: counts, and per task type the share of reviewed tasks that passed
    the checks a person kept and the share of reviewed rejected ones a person rescued."""

    reviewed: int = 0
    kept: int = 0
    edited: int = 0
    rejected: int = 0
    rescued: int = 0
    kept_by_type: dict[str, Share] = field(default_factory=dict)
    rescued_by_type: dict[str, Share] = field(default_factory=dict)

    def add(self, task_type: str, status: str, decision: str, edited: bool, count: int) -> None:
        accepted = decision == "accepted"
        self.reviewed += count
        self.kept += count * (accepted and status in PASSED)
        self.edited += count * (accepted and edited)
        self.rejected += count * (not accepted)
        self.rescued += count * (accepted and status not in PASSED)
        if status in PASSED or status == "rejected":
            shares = self.kept_by_type if status in PASSED else self.rescued_by_type
            share = shares.setdefault(task_type, Share())
            share.part += count * accepted
            share.whole += count

    def line(self) -> str:
        """One line: "12 (kept 9, 1 edited; rejected 2; rescued 1)"."""
        return REVIEWED.format(**self.to_dict())

    def precision(self) -> list[tuple[str, Share, Share]]:
        """Per task type: kept of the reviewed that passed the checks, rescued of the reviewed
        rejected."""
        kinds = sorted(set(self.kept_by_type) | set(self.rescued_by_type))
        return [
            (kind, self.kept_by_type.get(kind, Share()), self.rescued_by_type.get(kind, Share()))
            for kind in kinds
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reviewed": self.reviewed,
            "kept": self.kept,
            "edited": self.edited,
            "rejected": self.rejected,
            "rescued": self.rescued,
            "by_type": {
                kind: {"kept": kept.to_dict(), "rescued": rescued.to_dict()}
                for kind, kept, rescued in self.precision()
            },
        }


def status_lines(reviews: dict[str, Any]) -> dict[str, str]:
    """`bonito status`'s lines for a `Tally.to_dict()`: the counts, then per task type the
    share kept and the share rescued."""
    lines = {"reviewed": REVIEWED.format(**reviews)}
    for kind, shares in reviews["by_type"].items():
        kept, rescued = (Share(share["part"], share["whole"]) for share in shares.values())
        lines[f"precision {kind}"] = f"kept {kept}; rescued {rescued}"
    return lines


def tally(store: RunStore) -> Tally:
    """The counts of every decision, by the task's type and run status."""
    found = Tally()
    if not store.has_reviews:
        return found
    rows = store.db.execute(
        "SELECT r.task_type, t.status, d.decision, d.input IS NOT NULL OR d.output IS NOT NULL, "
        "COUNT(*) FROM decisions d "
        "JOIN tasks t ON t.request_id = d.request_id AND t.sample = d.sample "
        "JOIN requests r ON r.id = t.request_id GROUP BY 1, 2, 3, 4"
    )
    for row in rows:
        found.add(*row)
    return found
