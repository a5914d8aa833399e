"""The review queue: a run's tasks in run order, narrowed by the page's filters (task type, run
status, rejection reason, document, text, review state) and, with --sample, to a seeded sample;
read live from the store, so tasks a running `bonito generate` saves join it as they come."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlencode

from bonito.prompt.sampling import derive_seed
from bonito.publish.report import StratifiedSample, fold, source_line
from bonito.runs.reviews import Decision, split_id
from bonito.runs.store import CANDIDATE, STATUSES, RunStore, task_id

REVIEW_STATES = {
    "": "all",
    "todo": "to review",
    "done": "reviewed",
    "kept": "kept by you",
    "rejected": "rejected by you",
    "edited": "edited by you",
}
STATUS_NAMES = (*STATUSES, CANDIDATE)
FROM = """
    FROM tasks t JOIN requests r ON r.id = t.request_id JOIN contexts c ON c.id = r.context_id
    LEFT JOIN decisions d ON d.request_id = t.request_id AND d.sample = t.sample
"""
REVIEW_CONDITIONS = {
    "todo": "d.decision IS NULL",
    "done": "d.decision IS NOT NULL",
    "kept": "d.decision = 'accepted'",
    "rejected": "d.decision = 'rejected'",
    "edited": "(d.input IS NOT NULL OR d.output IS NOT NULL)",
}
MAX_DOCUMENTS = 500
"""Documents offered in the document filter's list."""


@dataclass(frozen=True)
class Filters:
    """What the page narrows the queue to; empty strings filter nothing."""

    type: str = ""
    status: str = ""
    reason: str = ""
    document: str = ""
    q: str = ""
    review: str = ""

    @classmethod
    def of(cls, params: Any) -> Filters:
        """The filters in a request's query parameters (unknown review states ignored)."""
        found = cls(**{f.name: params.get(f.name, "").strip() for f in fields(cls)})
        return found if found.review in REVIEW_STATES else cls(**{**vars(found), "review": ""})

    def query(self) -> str:
        """The filters as a query string, without the empty ones."""
        return urlencode({key: value for key, value in vars(self).items() if value})

    def where(self, sample: list[str] | None, review: bool = True) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters (`review`: with the review state)."""
        parts, params = [], []
        for column, value in (
            ("r.task_type", self.type),
            ("t.status", self.status),
            ("t.reason", self.reason),
            ("c.document", self.document),
        ):
            if value:
                parts.append(f"{column} = ?")
                params.append(value)
        if self.q:
            parts.append(
                "instr(lower(COALESCE(t.input, '') || ' ' || COALESCE(t.output, '') || ' ' || "
                "COALESCE(d.input, '') || ' ' || COALESCE(d.output, '') || ' ' || c.text), ?)"
            )
            params.append(self.q.lower())
        if review and self.review:
            parts.append(REVIEW_CONDITIONS[self.review])
        if sample is not None:
            parts.append("t.request_id || '-' || t.sample IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sample))
        return " AND ".join(parts) or "1", params


class Queue:
    """The tasks to review in a run's store, in run order: neighbours, progress, one task."""

    def __init__(self, store: RunStore, sample: list[str] | None = None) -> None:
        self.store = store
        self.sample = sample

    def first(self, filters: Filters) -> str | None:
        """The first task to review, else the first task."""
        todo = Filters(**{**vars(filters), "review": "todo"})
        return self.neighbour(todo, None, +1) or self.neighbour(filters, None, +1)

    def neighbour(self, filters: Filters, task: str | None, step: int) -> str | None:
        """The task after (`step` 1) or before (-1) `task` in the queue (None: from its start)."""
        where, params = filters.where(self.sample)
        if task is not None:
            where += f" AND (t.request_id, t.sample) {'>' if step > 0 else '<'} (?, ?)"
            params += split_id(task)
        order = "ASC" if step > 0 else "DESC"
        row = self.store.db.execute(
            f"SELECT t.request_id, t.sample {FROM} WHERE {where} "
            f"ORDER BY t.request_id {order}, t.sample {order} LIMIT 1",
            params,
        ).fetchone()
        return task_id(*row) if row else None

    def progress(self, filters: Filters, task: str | None = None) -> dict[str, int]:
        """Tasks in the queue (review state aside), how many reviewed, and `task`'s place."""
        where, params = filters.where(self.sample, review=False)
        total, reviewed = self.store.db.execute(
            f"SELECT COUNT(*), COUNT(d.decision) {FROM} WHERE {where}", params
        ).fetchone()
        found = {"total": total, "reviewed": reviewed}
        if task is not None:
            where, params = filters.where(self.sample)
            found["position"] = self.store.db.execute(
                f"SELECT COUNT(*) {FROM} WHERE {where} AND (t.request_id, t.sample) <= (?, ?)",
                [*params, *split_id(task)],
            ).fetchone()[0]
        return found

    def task(self, task: str) -> dict[str, Any] | None:
        """One task as the page shows it, with its passage, completion and decision; None when
        the run has no such task."""
        try:
            key = split_id(task)
        except ValueError:
            return None
        row = self.store.db.execute(
            "SELECT t.input, t.output, t.status, t.reason, r.task_type, c.document, c.source, "
            f"c.text, m.text, d.decision, d.input, d.output, d.reason, d.at {FROM} "
            "JOIN completions m ON m.request_id = t.request_id AND m.sample = t.sample "
            "WHERE t.request_id = ? AND t.sample = ?",
            key,
        ).fetchone()
        if row is None:
            return None
        instruction, answer, status, reason, kind, document, source, passage, completion = row[:9]
        decision = Decision(*row[9:]) if row[9] else None
        shown = decision.applied({"input": instruction, "output": answer}) if decision else {}
        instruction, answer = shown.get("input", instruction), shown.get("output", answer)
        return {
            "id": task_id(*key),
            "task_type": kind,
            "status": status,
            "reason": reason,
            "document": document,
            "source": source_line(document, json.loads(source)),
            "passage": passage,
            "completion": completion,
            "input": instruction,
            "output": answer,
            "fold": fold(instruction, passage),
            "highlight": highlight(passage, answer),
            "decision": decision,
        }

    def options(self) -> dict[str, list[str]]:
        """The values the filters offer."""
        one = self.store.db.execute
        return {
            "type": [row[0] for row in one("SELECT DISTINCT task_type FROM requests ORDER BY 1")],
            "status": list(STATUS_NAMES),
            "reason": [
                row[0]
                for row in one(
                    "SELECT DISTINCT reason FROM tasks WHERE status = 'rejected' ORDER BY 1"
                )
            ],
            "document": [
                row[0]
                for row in one(
                    "SELECT DISTINCT document FROM contexts ORDER BY 1 LIMIT ?", (MAX_DOCUMENTS,)
                )
            ],
        }


def highlight(passage: str, answer: str | None) -> tuple[str, str, str] | None:
    """The passage around the first place the answer occurs in it as words (case aside), as
    (before, answer, after); None when it does not occur."""
    if not answer or not answer.strip():
        return None
    found = re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", passage, re.IGNORECASE)
    if found is None:
        return None
    return passage[: found.start()], found.group(), passage[found.end() :]


def draw_sample(store: RunStore, size: int, seed: int) -> list[str]:
    """A seeded sample of `size` tasks the checks accepted or rejected, shared fairly between
    (task type, run status) strata: each type's kept share and rescued share get reviews."""
    sample = StratifiedSample(size, derive_seed(seed, "review"))
    for task in store.tasks(("accepted", "rejected")):
        sample.add((task["task_type"], task["status"]), task["id"])
    return sorted(sample.pick(), key=split_id)
