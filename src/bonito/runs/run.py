"""A run: a folder with a SQLite store in which `bonito generate` keeps everything it reads and
generates, so that the same command run again continues where it stopped.

The flow, each step saved before the next: read and chunk the inputs into contexts, plan each
context's requests (task types from the mix, a seed each), send pending requests to the engine
in fixed blocks, judge every completion (parse, checks, dedup) and save it with its task; then,
with --retry-rejected, ask again for contexts that got no accepted task."""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import sqlite3
import sys
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from bonito.engines import check_sampling
from bonito.engines.base import Engine
from bonito.errors import BonitoError
from bonito.generate.dedup import Deduplicator
from bonito.generate.judge import (
    CHUNK_SIZE,
    Group,
    Request,
    Sample,
    Summary,
    counts,
    generate_samples,
)
from bonito.generate.mix import TaskMix
from bonito.prompt.sampling import SamplingParams, derive_seed
from bonito.prompt.task_types import TASK_TYPES_FILE, resolve_task_type, save_task_types
from bonito.read.chunking import Chunker, Context
from bonito.read.config import Chunking, Reading
from bonito.read.sources import (
    Document,
    InputPrint,
    Skip,
    check_inputs,
    input_prints,
    read_documents,
)
from bonito.runs.reviews import status_lines, tally
from bonito.runs.state import State, parse_state, state_line
from bonito.runs.store import (
    CANDIDATE,
    STORE_FILE,
    PlannedRequest,
    RunStore,
    SavedSample,
    StoredRequest,
    block_of,
    is_damaged,
)
from bonito.util.outputs import output_error, output_file, written_whole

if TYPE_CHECKING:
    from bonito.runs.scale import Cluster

TASKS_FILE, SUMMARY_FILE, SKIPPED_FILE, LOCK_FILE = (
    "tasks.jsonl",
    "summary.json",
    "skipped.jsonl",
    "run.lock",
)
RUN_FILES = (TASKS_FILE, SUMMARY_FILE, SKIPPED_FILE, LOCK_FILE, TASK_TYPES_FILE)
"""What a run writes beside its store (a folder holding only these may become a run)."""
CONTEXT_BATCH = 512
"""Contexts saved per transaction while reading."""
log = logging.getLogger("bonito")
FOLDER = "folder (--output)"
"""How the run's folder is named: `generate_run`'s parameter, then the CLI flag."""


@dataclass(frozen=True)
class Budgets:
    """Limits that end a run cleanly; raising one and running again continues it."""

    max_tasks: int | None = field(
        default=None, metadata={"help": "Stop after this many accepted tasks."}
    )
    max_output_tokens: int | None = field(
        default=None, metadata={"help": "Stop after generating this many tokens."}
    )
    retry_rejected: int = field(
        default=0,
        metadata={"help": "Ask again, up to this many times, for contexts with no accepted task."},
    )

    def __post_init__(self) -> None:
        for name in ("max_tasks", "max_output_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                flag = "--" + name.replace("_", "-")
                raise BonitoError(f"{name} ({flag}) must be at least 1, got {value}.")
        if self.retry_rejected < 0:
            raise BonitoError(
                f"retry_rejected (--retry-rejected) must be 0 or more, got {self.retry_rejected}."
            )


@dataclass(frozen=True)
class RunConfig:
    """What a run is: running again with the same configuration resumes it, a different one is
    refused. Engine choice, batch size and budgets are not part of it, nor `reading.limit`
    (a budget too: a larger one reads on, a smaller one keeps what was read); the inputs are
    compared by the files read, not by how their paths are spelled."""

    model: str
    inputs: tuple[str, ...]
    mix: TaskMix
    per_context: int
    sampling: SamplingParams
    reading: Reading = Reading()
    chunking: Chunking = Chunking()
    checks: bool = field(
        default=True,
        metadata={"help": "Task-aware checks; without them every parseable sample is kept."},
    )
    dedup: str | None = field(default=None, metadata={"help": "near, exact or off."})
    """None: near, or off without checks (the original's output)."""
    dedup_threshold: float = field(
        default=0.8,
        metadata={"help": "Word-shingle Jaccard similarity from which tasks are near-duplicates."},
    )

    def __post_init__(self) -> None:
        if self.dedup is None:
            object.__setattr__(self, "dedup", "near" if self.checks else "off")
        if self.dedup not in ("near", "exact", "off"):
            raise BonitoError(f"dedup (--dedup) must be near, exact or off, got '{self.dedup}'.")
        self.deduplicator()  # refuses a bad threshold before anything is read
        check_inputs(self.inputs, self.reading.include, self.reading.exclude)

    @property
    def seed(self) -> int:
        return self.sampling.seed if self.sampling.seed is not None else 0

    def to_dict(self, fingerprints: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.model,
            "inputs": fingerprints,
            "task_mix": self.mix.to_dict(),
            "per_context": self.per_context,
            "sampling": self.sampling.to_dict(),
            "reading": {k: v for k, v in self.reading.to_dict().items() if k != "limit"},
            "chunking": asdict(self.chunking),
            "checks": self.checks,
            "dedup": {"mode": self.dedup, "threshold": self.dedup_threshold},
        }

    def chunker(self) -> Chunker:
        """A chunker with the model's own tokenizer and the run's limits."""
        return Chunker.from_model(self.model, **asdict(self.chunking), task_types=self.mix.types)

    def deduplicator(self) -> Deduplicator | None:
        if self.dedup == "off":
            return None
        return Deduplicator(self.dedup_threshold, near=self.dedup == "near", seed=self.seed)


@dataclass
class Outcome:
    """How a run ended: its counts, its state (finished, or stopped with the budget reached as
    its detail); `error` says what went wrong when requests failed (None when none did)."""

    summary: Summary
    state: State
    detail: str = ""

    @property
    def error(self) -> str | None:
        return failed_note(self.summary)


def generate_run(
    folder: Path,
    config: RunConfig,
    load_engine: Callable[[], Engine],
    *,
    budgets: Budgets = Budgets(),
    overwrite: bool = False,
    strict: bool = False,
    make_chunker: Callable[[], Chunker] | None = None,
    engine_name: str | None = None,
    cluster: Cluster | None = None,
) -> Outcome:
    """Start or continue the run in `folder`: read and plan (up to --limit contexts),
    generate what is pending, and write summary.json. `load_engine` is called only if something
    is left to generate; `make_chunker` (default: the model's tokenizer) only if something is
    left to read. With `engine_name`, sampling that engine cannot honour is refused first. With
    a `cluster`, blocks are generated by engines on Ray (`bonito.runs.scale`), each loaded by
    `load_engine` on a worker; everything else happens here, as without."""
    if engine_name:
        check_sampling(engine_name, config.sampling, config.model)
    skipped = folder / SKIPPED_FILE
    reading = reading_options(config, folder)
    prints = input_prints(config.inputs, include=reading.include, exclude=reading.exclude)
    config_dict = config.to_dict([found.to_dict() for found in prints])
    if cluster is not None:
        from bonito.runs.scale import RayEngines  # imports Ray only here

        remote: AbstractContextManager[Engines | None] = RayEngines(
            cluster, load_engine, config, folder
        )
    else:
        remote = nullcontext()
    with remote as engines, Run(folder, config_dict, prints, overwrite=overwrite) as run:
        run.write_summary(State.RUNNING, "", engine_name)  # the earlier one is out of date
        if run.must_read(reading.limit):
            chunker = make_chunker() if make_chunker else config.chunker()
            chunker.check_window(config.sampling.max_tokens)
            summary = Summary()
            contexts = read_contexts(config.inputs, chunker, summary, skipped, reading)
            shown = bar(contexts, desc="reading", unit=" contexts", total=reading.limit)
            run.read(shown, summary, config, reading.limit)
            save_task_types(config.mix.types, folder)
        check_strict(run.summary(), strict, skipped)
        totals = run.store.counts()
        with bar(total=totals["requests"], initial=totals["requests_done"]) as progress:

            def advance(done: int, total: int) -> None:
                progress.total = total
                progress.update(done)

            def load() -> Engine:
                progress.clear()  # the line is the loader's (its messages) until it is done
                try:
                    return load_engine()
                finally:
                    progress.refresh()

            state, detail = run.generate(
                engines or LocalEngine(load, config.sampling, config.checks),
                config,
                budgets,
                advance,
            )
        return Outcome(run.write_summary(state, detail, engine_name), state, detail)


class Engines(Protocol):
    """Where a run's blocks are generated: `groups(requests, ahead)` yields a block's groups of
    judged samples in the order its engine finishes them; `ahead(after)` reads the pending
    blocks past request id `after`, as they are asked for (for engines that work ahead)."""

    def groups(
        self, requests: list[Request], ahead: Callable[[int], Iterator[list[Request]]]
    ) -> Generator[Group, None, None]: ...


@dataclass
class LocalEngine:
    """Blocks generated in this process by one engine, loaded when the first block comes."""

    load_engine: Callable[[], Engine]
    sampling: SamplingParams
    checks: bool
    engine: Engine | None = None

    def groups(
        self, requests: list[Request], ahead: Callable[[int], Iterator[list[Request]]]
    ) -> Generator[Group, None, None]:
        self.engine = self.engine or self.load_engine()
        return generate_samples(self.engine, requests, self.sampling, checks=self.checks)


def requests_of(chunk: Sequence[StoredRequest]) -> list[Request]:
    """Stored requests as they are sent."""
    return [
        Request(r.context, resolve_task_type(r.task_type), r.id, r.seed, r.source) for r in chunk
    ]


def reading_options(config: RunConfig, folder: Path) -> Reading:
    """The run's reading options, with the run's own folder left out of every input folder
    that holds it (its files are not documents)."""
    own = []
    for item in config.inputs:
        inside = _inside(folder, Path(item).expanduser())
        if inside == Path("."):
            raise BonitoError(f"{FOLDER} {folder} is the input {item}; choose another folder.")
        if inside is not None:
            own.append(glob.escape(inside.as_posix()) + "/*")
    return replace(config.reading, exclude=(*config.reading.exclude, *own))


def _inside(folder: Path, parent: Path) -> Path | None:
    """`folder`'s path inside `parent`, if it is inside it."""
    try:
        return folder.resolve().relative_to(parent.resolve()) if parent.is_dir() else None
    except ValueError:
        return None


BAR_FORMATS = (
    "{desc}: {n_fmt}{unit} [{elapsed}, {rate_noinv_fmt}{postfix}]",
    "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]",
)
"""tqdm's own formats, without a total and with one, but a rate is always so many a second
(tqdm would turn a slow one into "1.50s/ prompts")."""


def bar(iterable=None, **options: Any) -> tqdm:
    """A progress bar on stderr, shown only on a terminal: as wide as the terminal, or 80
    columns where it reports no size (a pseudo-terminal made without one, as by `script`, in
    which tqdm would draw nothing)."""
    size = {"dynamic_ncols": True} if _terminal_sized() else {"ncols": 80, "nrows": 24}
    counted = options.get("total") is not None or hasattr(iterable, "__len__")
    shape = {"desc": "generating", "unit": " prompts", "bar_format": BAR_FORMATS[counted]}
    return tqdm(iterable, disable=None, file=sys.stderr, **(shape | size | options))


def _terminal_sized() -> bool:
    """Whether stderr is a terminal that reports its size."""
    try:
        return all(os.get_terminal_size(sys.stderr.fileno()))
    except (OSError, ValueError):
        return False


def check_strict(summary: Summary, strict: bool, skipped: Path) -> None:
    """With `strict`, anything skipped is an error."""
    if strict and summary.skipped:
        raise BonitoError(
            f"strict (--strict): {summary.skipped.total()} skipped ({counts(summary.skipped)}); "
            f"see {skipped}."
        )


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Where two configurations differ, one line each: `sampling.temperature: 0.5 -> 0.7`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for key in sorted(set(old) | set(new))
            for line in differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        ]
    return [] if old == new else [f"{path}: {json.dumps(old)} -> {json.dumps(new)}"]


def check_store(folder: Path) -> None:
    """Refuse a store that is a link (SQLite would write where it points) or an emptied one
    beside its run's tasks (SQLite would take it for a new run)."""
    store = folder / STORE_FILE
    for path in folder.glob(STORE_FILE + "*"):
        if path.is_symlink():
            raise BonitoError(
                f"{path} is a symbolic link, and a run writes its store only inside its folder; "
                "put the file it points to in its place, or pass overwrite=True (--overwrite) "
                "to start over."
            )
    if store.is_file() and not store.stat().st_size:
        kept = [name for name in (TASKS_FILE, SUMMARY_FILE) if (folder / name).exists()]
        if kept:
            raise damaged(store, f"it is empty, beside {kept[0]}")


def identity(path: Path) -> tuple[int, int]:
    """Which file `path` is: its device and inode (kept while it is open, never reused)."""
    found = os.stat(path)
    return found.st_dev, found.st_ino


def check_run_folder(folder: Path) -> None:
    """Refuse a folder that holds something else than a run (a folder of documents, say)."""
    if not folder.is_dir() or (folder / STORE_FILE).exists():
        return
    others = sorted(path.name for path in folder.iterdir() if path.name not in RUN_FILES)
    if others:
        raise BonitoError(
            f"{FOLDER} {folder} is not empty and holds no bonito run (it has {others[0]}); "
            "choose a new or empty folder."
        )


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Turn a full disk, a read-only folder or a locked database into one clear error."""
    try:
        yield
    except OSError as error:
        raise output_error(folder, error, FOLDER, resumable=True) from error
    except sqlite3.DatabaseError as error:  # SQLite's own words: "database or disk is full"...
        if is_damaged(error):
            raise damaged(folder / STORE_FILE, error) from error
        code = errno.ENOSPC if "full" in str(error) else errno.EIO
        raise output_error(folder, OSError(code, str(error)), FOLDER, resumable=True) from error


def damaged(path: Path, why: object) -> BonitoError:
    """The sentence for a store that cannot be a run's any more (truncated, emptied)."""
    return BonitoError(
        f"{path} is damaged ({why}): restore it, or start the run over with overwrite=True "
        "(`bonito generate --overwrite`)."
    )


@contextmanager
def stored(folder: Path) -> Iterator[RunStore]:
    """A run's store opened read-only, its configuration checked; a store SQLite cannot read
    is one BonitoError."""
    path = folder / STORE_FILE
    try:
        store = RunStore(path, readonly=True)
        try:
            if store.get("config") is None:
                raise damaged(path, "it holds no run configuration")
            yield store
        finally:
            store.close()
    except sqlite3.DatabaseError as error:
        if is_damaged(error):
            raise damaged(path, error) from error
        raise BonitoError(
            f"Cannot read {path} ({error}): run the command again; if it fails again, restore "
            "the file."
        ) from error


def running(folder: Path) -> bool:
    """Whether a process holds the run's lock. The lock file is never created, and the test
    holds the lock for an instant (a `generate` starting then waits that instant)."""
    path = folder / LOCK_FILE
    if not path.exists():
        return False
    probe = FileLock(path)
    try:
        probe.acquire(blocking=False)
    except Timeout:
        return True
    probe.release()
    return False


class Run:
    """An open run folder, locked against other processes for as long as it is open."""

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any],
        inputs: Sequence[InputPrint] = (),
        *,
        overwrite: bool = False,
    ) -> None:
        self.folder = folder
        with writing(folder):
            check_run_folder(folder)
            if not overwrite:
                check_store(folder)
            folder.mkdir(parents=True, exist_ok=True)
            self.lock = FileLock(folder / LOCK_FILE)
            try:
                self.lock.acquire(timeout=1)  # `bonito status` may be testing it this instant
            except Timeout:
                raise BonitoError(
                    f"{folder} is in use by another bonito process; wait for it to finish "
                    f"(`bonito status` shows it) or choose another {FOLDER}."
                ) from None
            try:
                changed = self._open(config, inputs, overwrite)
            except BaseException:
                self.lock.release()
                raise
        if changed:
            self.close()
            raise BonitoError(
                f"{folder} holds a run with another configuration:\n  "
                + "\n  ".join(changed)
                + "\nRun the command it was started with, on its inputs as they were, to "
                "continue it; pass overwrite=True (--overwrite) to start over, or choose another "
                "folder (new documents can make a run of their own)."
            )
        self.config = config

    def _open(
        self, config: dict[str, Any], inputs: Sequence[InputPrint], overwrite: bool
    ) -> list[str]:
        """Open the store (a new one with `overwrite`, or when nothing was generated with
        another configuration), keeping `config` and `inputs` in a new one; how they differ
        from the run's, one line each."""
        if overwrite:
            self._clear()
        self.store = RunStore(self.folder / STORE_FILE)
        changed = self._changes(config, inputs)
        if changed and not self.store.counts()["samples"]:  # nothing to keep
            log.info(
                "%s: nothing was generated yet; starting it over with this configuration",
                self.folder,
            )
            self.store.close()
            self._clear()
            self.store = RunStore(self.folder / STORE_FILE)
            changed = []
        if self.store.get("config") is None:
            self.store.put("config", config)
            self.store.put("inputs", [asdict(found) for found in inputs])
        self.store.drop_contexts(self.store.get("reading", {}).get("contexts", 0))
        self.identity = identity(self.folder / STORE_FILE)
        return changed

    def check_folder(self) -> None:
        """Stop when the folder was deleted or replaced under this run: what is there now
        (another process's run, say) is not this run's to write."""
        try:
            same = identity(self.folder / STORE_FILE) == self.identity
        except FileNotFoundError:
            same = False
        if not same:
            raise BonitoError(
                f"{self.folder} was deleted or replaced while this run was writing it, so it "
                "stopped; run the same command again to continue the run that is there now."
            )

    def _clear(self) -> None:
        for name in (STORE_FILE, TASKS_FILE, SUMMARY_FILE, SKIPPED_FILE):
            for path in self.folder.glob(name + "*"):
                path.unlink()

    def _changes(self, config: dict[str, Any], inputs: Sequence[InputPrint]) -> list[str]:
        """How `config` and `inputs` differ from the run's, one line each (inputs by file)."""
        stored = self.store.get("config")
        if stored is None:
            return []
        before = [InputPrint(**found) for found in self.store.get("inputs", [])]
        lines = differences({**stored, "inputs": None}, {**config, "inputs": None})
        if len(before) != len(inputs):
            spelled = [", ".join(found.input for found in side) for side in (before, inputs)]
            return [*lines, "inputs: {} -> {}".format(*spelled)]
        return lines + [
            line for old, new in zip(before, inputs, strict=True) for line in new.changes(old)
        ]

    def close(self) -> None:
        self.store.close()
        self.lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # reading
    def must_read(self, limit: int | None) -> bool:
        """Whether contexts are left to read: the reading never finished, or stopped at a
        smaller --limit than `limit` (a smaller one keeps the contexts read, and says so)."""
        reading = self.store.get("reading")
        if reading is None:
            return True
        if limit is not None and limit < reading["contexts"]:
            log.warning(
                "%s holds %d contexts, more than limit (--limit) %d: it keeps them all; "
                "overwrite=True (--overwrite) starts over with %d",
                self.folder,
                reading["contexts"],
                limit,
                limit,
            )
        return not reading["complete"] and (limit is None or limit > reading["contexts"])

    def read(
        self,
        contexts: Iterator[Context],
        summary: Summary,
        config: RunConfig,
        limit: int | None = None,
    ) -> None:
        """Save every context past those of the last reading with their planned requests, in
        batches; the reading's counts are saved last, which marks it done (contexts of a
        reading that did not finish are dropped when the run is opened)."""
        with writing(self.folder):
            kept = self.store.get("reading", {}).get("contexts", 0)
            batch: list[Context] = []
            for number, context in enumerate(contexts):
                if number < kept:
                    continue
                batch.append(context)
                if len(batch) == CONTEXT_BATCH:
                    self._save_contexts(batch, config)
                    batch = []
            self._save_contexts(batch, config)
            self.store.put(
                "reading",
                {
                    "documents": summary.documents,
                    "skipped": dict(summary.skipped),
                    "contexts": summary.contexts,
                    "capped": summary.capped,
                    "complete": limit is None or summary.contexts < limit,
                },
            )

    def _save_contexts(self, contexts: list[Context], config: RunConfig) -> None:
        first = self.store.db.execute("SELECT COUNT(*) FROM contexts").fetchone()[0]
        rows, requests = [], []
        for number, context in enumerate(contexts, first):
            rows.append(
                (number, context.document, context.provenance(), context.text, context.tokens)
            )
            kinds = config.mix.assign(config.per_context, config.seed, number)
            for slot, kind in enumerate(kinds):
                seed = derive_seed(config.seed, number, slot, 0)
                requests.append(PlannedRequest(number, slot, 0, kind.short, seed))
        self.store.add_contexts(rows, requests)

    # generating
    def generate(
        self,
        engines: Engines,
        config: RunConfig,
        budgets: Budgets,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[State, str]:
        """Send every pending request, block by block, saving results as each group finishes
        and deciding dedup in request order once a block is done (so neither the order in which
        groups finish nor a resume changes which tasks are kept); returns why it stopped:
        finished, or stopped with the budget reached. `engines` are asked only if something is
        pending, and `progress` is called with the requests each group finished and the run's
        total."""
        store = self.store
        with writing(self.folder):
            store.put("state", state_line(State.RUNNING))
            store.retry_failed()
            dedup = self._rebuild_dedup(config)
            self._rewrite_tasks_file()
            totals = store.counts()
            accepted = totals["accepted"] + totals["candidates"]
            tally = Tally(accepted, totals["output_tokens"], totals["requests"])
            with (self.folder / TASKS_FILE).open("a", encoding="utf-8") as tasks_file:
                while True:
                    chunk = store.next_chunk(CHUNK_SIZE)
                    if budget_reached(budgets, tally) or not self._continues_block(chunk):
                        tally.accepted -= self._decide(dedup, tasks_file)
                    if reached := budget_reached(budgets, tally):
                        state, detail = State.STOPPED, reached
                        break
                    if not chunk and budgets.retry_rejected:
                        tally.requests += self._plan_retries(budgets.retry_rejected, config)
                        chunk = store.next_chunk(CHUNK_SIZE)
                    if not chunk:
                        state, detail = State.FINISHED, ""
                        break
                    self._send(engines, chunk, budgets, tally, progress)
            store.put("state", state_line(state, detail))
        return state, detail

    def _ahead(self, after: int) -> Iterator[list[Request]]:
        """The pending blocks past request id `after`, read as they are asked for."""
        while chunk := self.store.next_chunk(CHUNK_SIZE, after):
            yield requests_of(chunk)
            after = chunk[-1].id

    def _continues_block(self, chunk: Sequence[StoredRequest]) -> bool:
        """Whether `chunk` is the rest of the block of the candidates not yet decided (a run
        stopped in the middle of a block): they are then decided with it, as if it had not."""
        first = self.store.first_candidate()
        if first is None or not chunk:
            return False
        return block_of(first, CHUNK_SIZE) == block_of(chunk[0].id, CHUNK_SIZE)

    def _send(
        self,
        engines: Engines,
        chunk: Sequence[StoredRequest],
        budgets: Budgets,
        tally: Tally,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Send a block's pending requests, saving each group as it finishes, until a budget
        runs out."""
        groups = engines.groups(requests_of(chunk), self._ahead)
        for group in groups:
            self._save(group, budgets, tally)
            if progress:
                progress(len({s.request.key for s in group.samples}), tally.requests)
            if budget_reached(budgets, tally):
                groups.close()
                break

    def _save(self, group: Group, budgets: Budgets, tally: Tally) -> None:
        """Save a group's samples up to where a budget runs out (their tasks as candidates),
        and its failures; the candidates count as accepted until they are decided."""
        self.check_folder()
        samples = within_budgets(group.samples, budgets, tally)
        self.store.save([saved(s) for s in samples], group.seconds)
        self.store.fail([(request.key, reason) for request, reason in group.failed])
        tally.accepted += sum(s.status == "accepted" for s in samples)
        tally.tokens += sum(s.completion.completion_tokens for s in samples)

    def _decide(self, dedup: Deduplicator | None, tasks_file) -> int:
        """Decide the candidates' dedup, the tasks kept written out; how many were duplicates."""
        kept, duplicates = decide(self.store, dedup)
        self._append_tasks(tasks_file, kept)
        return duplicates

    def _plan_retries(self, max_attempt: int, config: RunConfig) -> int:
        """Plan another attempt for contexts with no accepted task; how many requests."""
        retries = [
            PlannedRequest(
                r.context_id,
                r.slot,
                r.attempt,
                r.task_type,
                derive_seed(config.seed, r.context_id, r.slot, r.attempt),
            )
            for r in self.store.unanswered_contexts(max_attempt)
        ]
        with self.store.transaction():
            self.store.add_requests(retries)
        return len(retries)

    def _rebuild_dedup(self, config: RunConfig) -> Deduplicator | None:
        """The dedup index as it was: every accepted task fed again, in request order."""
        dedup = config.deduplicator()
        if dedup is not None:
            accepted = self.store.tasks(("accepted",))
            dedup.add_many([(t["id"], t["input"], t["output"], t["context"]) for t in accepted])
        return dedup

    def _rewrite_tasks_file(self) -> None:
        """tasks.jsonl again from the store: a killed run may have saved tasks it did not get
        to write out, and never the other way round."""
        meta = self._task_meta()
        with written_whole(self.folder / TASKS_FILE) as file:
            for task in self.store.tasks(("accepted",)):
                file.write(json.dumps(task_record(task) | meta, ensure_ascii=False) + "\n")

    def _append_tasks(self, file, tasks: Iterable[dict[str, Any]]) -> None:
        meta = self._task_meta()
        for task in tasks:
            file.write(json.dumps(task_record(task) | meta, ensure_ascii=False) + "\n")
        file.flush()

    def _task_meta(self) -> dict[str, Any]:
        return {"model": self.config["model"], "sampling": self.config["sampling"]}

    # counting
    def summary(self) -> Summary:
        """The run's counts: the reading's, and what the store holds."""
        reading = self.store.get("reading", {})
        return summary_from(reading, self.store.counts())

    def write_summary(self, state: State, detail: str = "", engine: str | None = None) -> Summary:
        self.check_folder()
        summary = self.summary()
        with writing(self.folder):
            record = {
                "config": {**self.config, "engine": engine},
                "state": state_line(state, detail),
                "summary": summary.to_dict(),
            }
            with written_whole(self.folder / SUMMARY_FILE) as file:
                file.write(json.dumps(record, indent=2) + "\n")
        return summary


def summary_from(reading: dict[str, Any], totals: dict[str, Any]) -> Summary:
    return Summary(
        documents=reading.get("documents", 0),
        contexts=totals["contexts"],
        context_tokens=totals["context_tokens"],
        capped=reading.get("capped", 0),
        skipped=Counter(reading.get("skipped", {})),
        samples=totals["samples"],
        accepted=totals["accepted"],
        accepted_by_type=Counter(totals["accepted_by_type"]),
        duplicates=totals["duplicates"],
        rejected=Counter(totals["rejected"]),
        failed=totals["requests_failed"],
        last_error=totals["last_error"],
        output_tokens=totals["output_tokens"],
        elapsed=totals["generation_seconds"],
    )


def failed_note(summary: Summary) -> str | None:
    """One sentence on the requests that failed, with the last error and what to do; None if
    none failed."""
    if not summary.failed:
        return None
    requests = "request" if summary.failed == 1 else "requests"
    return (
        f"{summary.failed} {requests} failed (last error: {summary.last_error}); run the same "
        "command to retry them."
    )


@dataclass
class Tally:
    """Running totals the budgets are checked against."""

    accepted: int
    tokens: int
    requests: int


def budget_reached(budgets: Budgets, tally: Tally) -> str | None:
    """Which budget is used up, if any, as the detail of the run's stopped state."""
    if budgets.max_tasks is not None and tally.accepted >= budgets.max_tasks:
        return f"max_tasks (--max-tasks) {budgets.max_tasks} reached"
    if budgets.max_output_tokens is not None and tally.tokens >= budgets.max_output_tokens:
        return f"max_output_tokens (--max-output-tokens) {budgets.max_output_tokens} reached"
    return None


def within_budgets(samples: list[Sample], budgets: Budgets, tally: Tally) -> list[Sample]:
    """The samples up to the request at which a budget is used up (whole requests only: the
    rest stay pending)."""
    if budgets.max_tasks is None and budgets.max_output_tokens is None:
        return samples
    after = Tally(tally.accepted, tally.tokens, tally.requests)
    for position, sample in enumerate(samples):
        after.accepted += sample.status == "accepted"
        after.tokens += sample.completion.completion_tokens
        last_of_request = (
            position + 1 == len(samples) or samples[position + 1].request is not sample.request
        )
        if last_of_request and budget_reached(budgets, after):
            return samples[: position + 1]
    return samples


def decide(store: RunStore, dedup: Deduplicator | None) -> tuple[list[dict[str, Any]], int]:
    """Judge the store's candidates against the tasks kept so far and each other, in request
    order: the duplicates marked, the rest accepted; the accepted ones, and how many were
    duplicates."""
    candidates = list(store.tasks((CANDIDATE,)))
    items = [(t["id"], t["input"], t["output"], t["context"]) for t in candidates]
    found = dedup.add_many(items) if dedup else [None] * len(items)
    store.decide(
        [
            (t["request_id"], t["sample_index"], original)
            for t, original in zip(candidates, found, strict=True)
            if original
        ]
    )
    kept = [t for t, original in zip(candidates, found, strict=True) if not original]
    return kept, len(candidates) - len(kept)


def saved(sample: Sample) -> SavedSample:
    """A judged sample as the store keeps it: an accepted one as a candidate, for dedup to
    decide."""
    completion, task = sample.completion, sample.task
    return SavedSample(
        sample.request.key,
        sample.index,
        completion.text,
        completion.finish_reason,
        completion.prompt_tokens,
        completion.completion_tokens,
        task.input if task else None,
        task.output if task else None,
        CANDIDATE if sample.status == "accepted" else sample.status,
        sample.reason,
    )


def task_record(task: dict[str, Any]) -> dict[str, Any]:
    """An accepted task as one line of tasks.jsonl."""
    keys = ("id", "input", "output", "task_type", "context", "source", "sample_index")
    return {key: task[key] for key in keys}


def write_contexts(
    output: Path,
    model: str,
    inputs: Sequence[str],
    reading: Reading | None = None,
    chunking: Chunking | None = None,
    *,
    strict: bool = False,
    make_chunker: Callable[[], Chunker] | None = None,
) -> Summary:
    """What `generate` would send, without running the model (`bonito chunk`): the contexts of
    `inputs` as `model`'s tokenizer cuts them, written to `output` (JSON Lines, whole or not at
    all), every Skip to skipped.jsonl beside it; the reading's counts. `make_chunker` (default:
    the model's tokenizer) makes the chunker; with `strict`, anything skipped is an error."""
    reading, chunking = reading or Reading(), chunking or Chunking()
    check_inputs(inputs, reading.include, reading.exclude)
    output_file(output)
    chunker = make_chunker() if make_chunker else Chunker.from_model(model, **asdict(chunking))
    summary, skipped = Summary(), output.parent / SKIPPED_FILE
    with written_whole(output) as file:
        contexts = read_contexts(inputs, chunker, summary, skipped, reading)
        for context in bar(contexts, desc="reading", unit=" contexts", total=reading.limit):
            file.write(json.dumps(context.to_dict(), ensure_ascii=False) + "\n")
    check_strict(summary, strict, skipped)
    return summary


def read_contexts(
    inputs: Sequence[str | Path],
    chunker: Chunker,
    summary: Summary,
    skipped: Path,
    reading: Reading | None = None,
) -> Iterator[Context]:
    """Contexts from the inputs, read and chunked lazily, at most `reading.limit`, and at most
    the first `reading.per_document` of each document: the reading stops where the next context
    would start, so the skips before it are reached too. Documents reached, contexts, their
    tokens, the contexts left out by `per_document` and skips by reason are counted in
    `summary`, and every Skip is written to the file `skipped` as a JSON line; BonitoError when
    no context comes out."""
    reading = reading or Reading()
    limit, per_document = reading.limit, reading.per_document
    documents = read_documents(
        inputs,
        reading.text_field,
        split=reading.split,
        include=reading.include,
        exclude=reading.exclude,
    )
    reached = Reached(summary)
    first_skip, document, taken = None, None, 0
    with written_whole(skipped) as file:
        for item in chunker.chunk(reached.pulled(documents)):
            if isinstance(item, Context) and summary.contexts == limit:
                return
            reached.reach(item)
            if isinstance(item, Skip):
                first_skip = first_skip or item
                summary.skipped[item.reason] += 1
                file.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
                continue
            taken = taken + 1 if item.document == document else 1
            document = item.document
            if per_document is not None and taken > per_document:
                summary.capped += 1
                continue
            summary.contexts += 1
            summary.context_tokens += item.tokens
            yield item
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


class Reached:
    """Counts a document in `summary` when the chunker's output reaches it, not when the
    chunker reads it: it reads ahead in batches, and documents read ahead of a --limit were
    not used. Every document gives at least one context or Skip, with its id."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self.waiting: deque[str] = deque()

    def pulled(self, items: Iterable[Document | Skip]) -> Iterator[Document | Skip]:
        for item in items:
            if isinstance(item, Document):
                self.waiting.append(item.id)
            yield item

    def reach(self, item: Context | Skip) -> None:
        source = item.document if isinstance(item, Context) else item.source
        if self.waiting and self.waiting[0] == source:
            self.waiting.popleft()
            self.summary.documents += 1


def status_facts(folder: Path) -> dict[str, Any]:
    """A running or finished run's facts (what `bonito status --json` prints): its state,
    model, task mix, requests, the counts of summary.json, and while it runs its rate and ETA."""
    path = folder / STORE_FILE
    if not path.is_file():
        where = (
            f"{folder} is the run's store; give its folder, {folder.parent}"
            if folder.name == STORE_FILE
            else f"{folder} is not a bonito run (it has no {STORE_FILE}); give a run's folder "
            "(--output of `bonito generate`)"
        )
        raise BonitoError(f"{where}.")
    now = running(folder)
    with stored(folder) as store:
        config, store_state, totals = store.get("config"), store.get("state"), store.counts()
        rate = store.recent_rate() if now else 0.0
        summary = summary_from(store.get("reading", {}), totals)
        reviews = tally(store)
    facts = {
        "state": state_line(*run_state(store_state, now)),
        "model": config["model"],
        "task_mix": config["task_mix"],
        "requests": totals["requests"],
        "requests_done": totals["requests_done"],
        "requests_failed": totals["requests_failed"],
        "summary": summary.to_dict(),
    }
    if reviews.reviewed:
        facts["reviews"] = reviews.to_dict()
    if now:
        left = totals["requests"] - totals["requests_done"]
        facts["requests_per_second"] = round(rate, 3)
        facts["eta_s"] = round(left / rate) if rate else None
    return facts


def run_state(stored_line: str | None, now_running: bool) -> tuple[State, str]:
    """A run's state from the one its store keeps and whether a process holds it now: a run
    the store calls running that no process holds was interrupted."""
    if now_running:
        return State.RUNNING, ""
    if stored_line is None or parse_state(stored_line)[0] is State.RUNNING:
        return State.INTERRUPTED, "run the same `bonito generate` command to continue"
    return parse_state(stored_line)


def status(folder: Path) -> dict[str, str]:
    """A running or finished run's state, progress, rate, ETA and counts, as lines to show."""
    facts = status_facts(folder)
    summary, requests, done = facts["summary"], facts["requests"], facts["requests_done"]
    lines = {
        "state": facts["state"],
        "model": facts["model"],
        "task mix": ", ".join(f"{k}:{w:g}" for k, w in facts["task_mix"].items()),
        "progress": f"{done}/{requests} requests ({done / requests:.1%})" if requests else "0",
        "documents": str(summary["documents"]),
        "contexts": str(summary["contexts"]),
        "samples": str(summary["samples"]),
        "accepted": accepted_line(summary),
        "duplicates": str(summary["duplicates"]),
        "rejected": counts(Counter(summary["rejected"])) or "0",
        "failed requests": str(summary["failed_requests"]),
        "generation time": f"{summary['elapsed_s']:.1f}s",
        "output tokens/s": f"{summary['output_tokens_per_s']:.1f}",
    }
    if summary["failed_requests"]:
        lines["last error"] = summary["last_error"]
    if "reviews" in facts:
        lines |= status_lines(facts["reviews"])
    if "requests_per_second" in facts:
        rate, eta = facts["requests_per_second"], facts["eta_s"]
        lines["rate"] = f"{rate:.2f} requests/s over the last minute"
        lines["eta"] = f"{eta}s" if eta is not None else "unknown"
    return lines


def accepted_line(summary: dict[str, Any]) -> str:
    """Accepted tasks, their share of the samples and their task types: "45 (38% of samples:
    summarization 29, ynqa 9, exqa 7)"."""
    by_type = counts(Counter(summary["accepted_by_type"]))
    share = f"{summary['acceptance_rate']:.0%} of samples"
    return (
        f"{summary['accepted']} ({share}: {by_type})"
        if by_type
        else f"{summary['accepted']} ({share})"
    )
