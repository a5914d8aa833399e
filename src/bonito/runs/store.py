"""The run store: one SQLite file (WAL) holding a run's configuration, contexts, requests,
completions and tasks, written as results come so that a killed run loses at most what was in
flight. Plain SQL over plain tuples; the run decides what to write, the store only keeps it."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonito.errors import BonitoError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contexts (
    id INTEGER PRIMARY KEY,
    document TEXT NOT NULL,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    context_id INTEGER NOT NULL REFERENCES contexts(id),
    slot INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    task_type TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    UNIQUE (context_id, slot, attempt)
);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status, id);
CREATE TABLE IF NOT EXISTS completions (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    sample INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finished_at REAL NOT NULL,
    batch_seconds REAL NOT NULL,
    PRIMARY KEY (request_id, sample)
);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    input TEXT,
    output TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    UNIQUE (request_id, sample),
    FOREIGN KEY (request_id, sample) REFERENCES completions(request_id, sample)
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    decision TEXT NOT NULL,
    input TEXT,
    output TEXT,
    reason TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_task ON reviews(request_id, sample, id);
CREATE VIEW IF NOT EXISTS decisions AS
    SELECT request_id, sample, decision, input, output, reason, at, MAX(id) AS id
    FROM reviews GROUP BY request_id, sample;
"""
STORE_FILE = "run.sqlite"
SCHEMA_VERSION = 2
"""The store's layout (SQLite's user_version): 1 (stored as 0) the run, 2 the reviews a person
made (`bonito review`: one row per action, a task's latest row its decision)."""

STATUSES = ("accepted", "rejected", "duplicate")
"""A task is accepted, rejected (`reason`: the rejection code) or a duplicate (`reason`: the id
of the earlier task it repeats)."""
CANDIDATE = "candidate"
"""A task that passed its checks, saved as it came, whose dedup is decided when its block of
requests is done (it is not yet one of the STATUSES)."""


@dataclass(frozen=True)
class PlannedRequest:
    context_id: int
    slot: int
    attempt: int
    task_type: str
    seed: int


@dataclass(frozen=True)
class StoredRequest:
    """A request read back to be sent: its id, seed, task type and context."""

    id: int
    context_id: int
    slot: int
    attempt: int
    task_type: str
    seed: int
    context: str
    source: dict[str, Any]


@dataclass(frozen=True)
class SavedSample:
    """One completion of a request and the task it became."""

    request_id: int
    sample: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    input: str | None
    output: str | None
    status: str
    reason: str | None


def block_of(request_id: int, size: int) -> int:
    """The block of `size` request ids a request is sent in."""
    return (request_id - 1) // size


def connect(path: Path, options: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?{options}", uri=True, isolation_level=None, timeout=30)


def is_damaged(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite found the file broken (truncated, overwritten, emptied), not only
    unwritable."""
    return any(words in str(error) for words in ("malformed", "not a database", "no such table"))


def task_id(request_id: int, sample: int) -> str:
    """The stable id of a task in its run: request and sample index."""
    return f"{request_id}-{sample}"


class RunStore:
    """A run's SQLite file. Writes happen in short transactions; readers (`bonito status`) may
    open the same file while a run writes to it."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.db = connect(path, "mode=ro" if readonly else "mode=rwc")
        if readonly and not os.access(path.parent, os.W_OK):
            try:
                self.db.execute("SELECT COUNT(*) FROM sqlite_master")
            except sqlite3.OperationalError:  # no -shm file can be made beside it: nobody writes
                self.db.close()
                self.db = connect(path, "immutable=1")
        self.version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if self.version > SCHEMA_VERSION:
            self.db.close()
            raise BonitoError(
                f"{path} was written by a newer bonito (store version {self.version}; this one "
                f"reads up to {SCHEMA_VERSION}): upgrade bonito to open this run."
            )
        if not readonly:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            if self.version < SCHEMA_VERSION:
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self.version = SCHEMA_VERSION

    @property
    def has_reviews(self) -> bool:
        """Whether the store has the reviews table (a store of an older bonito opened
        read-only has not)."""
        return (
            self.version == SCHEMA_VERSION
            or self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'reviews'").fetchone()
            is not None
        )

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # meta: configuration and state
    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # contexts and requests
    def drop_contexts(self, first: int) -> None:
        """Forget the contexts from id `first` on and their requests (a reading that did not
        finish starts again from where the last one that did ended; nothing of them has been
        generated)."""
        with self.transaction():
            self.db.execute("DELETE FROM requests WHERE context_id >= ?", (first,))
            self.db.execute("DELETE FROM contexts WHERE id >= ?", (first,))

    def add_contexts(
        self,
        contexts: Sequence[tuple[int, str, dict[str, Any], str, int]],
        requests: Sequence[PlannedRequest],
    ) -> None:
        """Contexts as (id, document, source, text, tokens), with their requests, at once."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO contexts (id, document, source, text, tokens) VALUES (?, ?, ?, ?, ?)",
                [(i, d, json.dumps(s, ensure_ascii=False), t, n) for i, d, s, t, n in contexts],
            )
            self.add_requests(requests)

    def add_requests(self, requests: Iterable[PlannedRequest]) -> None:
        self.db.executemany(
            "INSERT INTO requests (context_id, slot, attempt, task_type, seed) "
            "VALUES (?, ?, ?, ?, ?)",
            [(r.context_id, r.slot, r.attempt, r.task_type, r.seed) for r in requests],
        )

    def next_chunk(self, size: int, after: int = 0) -> list[StoredRequest]:
        """Requests still to send from the first block of `size` request ids that has any (past
        request id `after`): fixed blocks, so a resumed run batches the rest of a block as the
        first run would have."""
        first = self.db.execute(
            "SELECT MIN(id) FROM requests WHERE status = 'pending' AND id > ?", (after,)
        ).fetchone()[0]
        if first is None:
            return []
        low = block_of(first, size) * size + 1
        rows = self.db.execute(
            "SELECT r.id, r.context_id, r.slot, r.attempt, r.task_type, r.seed, c.text, c.source "
            "FROM requests r JOIN contexts c ON c.id = r.context_id "
            "WHERE r.status = 'pending' AND r.id >= ? AND r.id < ? ORDER BY r.id",
            (max(low, after + 1), low + size),
        ).fetchall()
        return [
            StoredRequest(id_, context, slot, attempt, kind, seed, text, json.loads(source))
            for id_, context, slot, attempt, kind, seed, text, source in rows
        ]

    def fail(self, failures: Sequence[tuple[int, str]]) -> None:
        """Mark requests failed, with why: they wait for the next time the run is started."""
        with self.transaction():
            self.db.executemany(
                "UPDATE requests SET status = 'failed', error = ? WHERE id = ?",
                [(reason, request_id) for request_id, reason in failures],
            )

    def retry_failed(self) -> int:
        """Make failed requests pending again; how many."""
        return self.db.execute(
            "UPDATE requests SET status = 'pending', error = NULL WHERE status = 'failed'"
        ).rowcount

    def unanswered_contexts(self, max_attempt: int) -> list[PlannedRequest]:
        """The requests of the latest attempt of every context that has no accepted task yet,
        fewer than `max_attempt` retries and no request still owed (failed, to be sent again),
        as they would be asked again (attempt + 1, no seed)."""
        rows = self.db.execute(
            """
            WITH latest AS (
                SELECT context_id, MAX(attempt) AS attempt FROM requests GROUP BY context_id
            )
            SELECT r.context_id, r.slot, r.attempt, r.task_type
            FROM requests r JOIN latest l
                ON l.context_id = r.context_id AND l.attempt = r.attempt
            WHERE l.attempt < ? AND NOT EXISTS (
                SELECT 1 FROM requests q CROSS JOIN tasks t ON t.request_id = q.id
                WHERE q.context_id = r.context_id AND t.status = 'accepted'
            ) AND NOT EXISTS (
                SELECT 1 FROM requests q WHERE q.context_id = r.context_id AND q.status != 'done'
            )
            ORDER BY r.context_id, r.slot
            """,
            (max_attempt,),
        ).fetchall()
        return [PlannedRequest(c, s, a + 1, t, 0) for c, s, a, t in rows]

    # results
    def save(self, samples: Sequence[SavedSample], seconds: float) -> None:
        """Completions and tasks of finished requests, and the requests marked done, at once."""
        now = time.time()
        with self.transaction():
            self.db.executemany(
                "INSERT INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        s.request_id,
                        s.sample,
                        s.text,
                        s.finish_reason,
                        s.prompt_tokens,
                        s.completion_tokens,
                        now,
                        seconds,
                    )
                    for s in samples
                ],
            )
            self.db.executemany(
                "INSERT INTO tasks (request_id, sample, input, output, status, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(s.request_id, s.sample, s.input, s.output, s.status, s.reason) for s in samples],
            )
            self.db.executemany(
                "UPDATE requests SET status = 'done', error = NULL WHERE id = ?",
                [(i,) for i in dict.fromkeys(s.request_id for s in samples)],
            )
            self.put("generation_seconds", self.get("generation_seconds", 0.0) + seconds)

    def first_candidate(self) -> int | None:
        """The request id of the first task still a candidate, if any."""
        return self.db.execute(
            "SELECT MIN(request_id) FROM tasks WHERE status = ?", (CANDIDATE,)
        ).fetchone()[0]

    def decide(self, duplicates: Sequence[tuple[int, int, str]]) -> None:
        """Every candidate accepted, but those given as (request id, sample, the id of the task
        it repeats), which are duplicates; at once."""
        with self.transaction():
            self.db.executemany(
                "UPDATE tasks SET status = 'duplicate', reason = ? "
                "WHERE request_id = ? AND sample = ?",
                [(reason, request_id, sample) for request_id, sample, reason in duplicates],
            )
            self.db.execute("UPDATE tasks SET status = 'accepted' WHERE status = ?", (CANDIDATE,))

    def tasks(self, statuses: Sequence[str] = STATUSES) -> Iterator[dict[str, Any]]:
        """Tasks in request order, with their request, context and completion."""
        marks = ",".join("?" * len(statuses))
        query = f"""
            SELECT t.request_id, t.sample, t.input, t.output, t.status, t.reason, r.task_type,
                   r.attempt, r.context_id, c.document, c.source, c.text, m.finish_reason,
                   m.prompt_tokens, m.completion_tokens
            FROM tasks t
            JOIN requests r ON r.id = t.request_id
            JOIN contexts c ON c.id = r.context_id
            JOIN completions m ON m.request_id = t.request_id AND m.sample = t.sample
            WHERE t.status IN ({marks}) ORDER BY t.request_id, t.sample
        """
        for row in self.db.execute(query, tuple(statuses)):
            yield {
                "id": task_id(row[0], row[1]),
                "request_id": row[0],
                "input": row[2],
                "output": row[3],
                "status": row[4],
                "reason": row[5],
                "task_type": row[6],
                "sample_index": row[1],
                "attempt": row[7],
                "context_id": row[8],
                "document": row[9],
                "source": json.loads(row[10]),
                "context": row[11],
                "finish_reason": row[12],
                "prompt_tokens": row[13],
                "completion_tokens": row[14],
            }

    def contexts(self) -> Iterator[dict[str, Any]]:
        """Every context with its number of accepted tasks. (CROSS JOIN fixes the join order,
        context's requests first: else SQLite scans every accepted task for each context.)"""
        query = """
            SELECT c.id, c.document, c.source, c.text, c.tokens,
                   (SELECT COUNT(*) FROM requests r CROSS JOIN tasks t ON t.request_id = r.id
                    WHERE r.context_id = c.id AND t.status = 'accepted')
            FROM contexts c ORDER BY c.id
        """
        for row in self.db.execute(query):
            yield {
                "id": row[0],
                "document": row[1],
                "source": json.loads(row[2]),
                "text": row[3],
                "tokens": row[4],
                "accepted": row[5],
            }

    # counts
    def counts(self) -> dict[str, Any]:
        """How far the run is: contexts, requests by status, samples, tasks by status, accepted
        ones by task type and rejected ones by reason, tokens, generation time."""
        one = self.db.execute
        requests = Counter(dict(one("SELECT status, COUNT(*) FROM requests GROUP BY status")))
        tasks = Counter(dict(one("SELECT status, COUNT(*) FROM tasks GROUP BY status")))
        rejected = dict(
            one(
                "SELECT reason, COUNT(*) FROM tasks WHERE status = 'rejected' "
                "GROUP BY reason ORDER BY COUNT(*) DESC, reason"
            )
        )
        accepted_by_type = dict(
            one(
                "SELECT r.task_type, COUNT(*) FROM tasks t JOIN requests r ON r.id = t.request_id "
                "WHERE t.status = 'accepted' GROUP BY r.task_type ORDER BY COUNT(*) DESC, 1"
            )
        )
        contexts, context_tokens = one(
            "SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM contexts"
        ).fetchone()
        output_tokens = one("SELECT COALESCE(SUM(completion_tokens), 0) FROM completions")
        last_error = one(
            "SELECT error FROM requests WHERE status = 'failed' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return {
            "contexts": contexts,
            "context_tokens": context_tokens,
            "requests": sum(requests.values()),
            "requests_done": requests["done"],
            "requests_failed": requests["failed"],
            "last_error": last_error[0] if last_error else None,
            "samples": sum(tasks.values()),
            "accepted": tasks["accepted"],
            "candidates": tasks[CANDIDATE],
            "accepted_by_type": accepted_by_type,
            "duplicates": tasks["duplicate"],
            "rejected": rejected,
            "output_tokens": output_tokens.fetchone()[0],
            "generation_seconds": self.get("generation_seconds", 0.0),
        }

    def recent_rate(self, seconds: float = 60.0) -> float:
        """Requests finished per second over the last `seconds` of work."""
        last = self.db.execute("SELECT MAX(finished_at) FROM completions").fetchone()[0]
        if last is None:
            return 0.0
        done, first = self.db.execute(
            "SELECT COUNT(DISTINCT request_id), MIN(finished_at - batch_seconds) "
            "FROM completions WHERE finished_at >= ?",
            (last - seconds,),
        ).fetchone()
        return done / (last - first) if last > first else 0.0


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, trace) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
