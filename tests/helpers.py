"""Helpers shared by test modules (test modules import from here, never from one another): the
command line in this process, documents to read, runs and run stores, and the browser marks."""

import importlib.util
import json
import random
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from bonito import SamplingParams, build_prompt
from bonito.cli import main
from bonito.generate.mix import TaskMix
from bonito.read.config import Reading
from bonito.read.sources import input_prints
from bonito.runs.run import RunConfig, generate_run
from bonito.runs.store import PlannedRequest, RunStore, SavedSample

EXAMPLES = Path(__file__).parents[1] / "examples" / "passages.jsonl"
BONITO = [sys.executable, "-c", "from bonito.cli import main; main()"]
"""The command line as a process of its own (for tests that kill it or hold its lock)."""


# The command line in this process


def run_cli(args, capsys, monkeypatch) -> tuple[int, str, str]:
    """Run the bonito command in this process: its exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["bonito", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bonito(*args) -> None:
    """Run the bonito command in this process; fail on a non-zero exit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["bonito", *map(str, args)])
        try:
            main()
        except SystemExit as stop:
            assert stop.code in (0, None), f"bonito {args} exited with {stop.code}"


# Documents

HOSTILE = (
    "Visitors to the old mill <script>window.pwned = 1</script> can see the wheel turn. "
    '<img src="http://127.0.0.1:9/x.png" onerror="window.pwned = 2"> The miller grinds '
    "wheat into flour every Saturday and sells it at the market </td></tr></table>."
)
"""A passage full of markup, which every page must show as text."""
ARTICLE = [
    "The city council voted on Tuesday to turn the old railway depot into a public library, "
    "ending a debate that had run for more than six years.",
    "Work on the roof will start in the spring, and the architects expect the reading rooms "
    "to open to the public within two years of the first stone being laid.",
    "Local historians welcomed the decision, noting that the depot was one of the last "
    "buildings of its kind still standing in the region.",
]
NEEDS_DOCS = "needs the docs extra: pip install -e '.[docs]'"


def example_texts() -> list[str]:
    return [json.loads(line)["text"] for line in EXAMPLES.read_text().splitlines()]


def write_passages(folder: Path) -> Path:
    """Sixteen documents made from the examples, and one full of markup."""
    texts = example_texts()
    lines = [json.dumps({"text": f"Note {i}. {texts[i % len(texts)]}"}) for i in range(16)]
    path = folder / "passages.jsonl"
    path.write_text("\n".join([*lines, json.dumps({"text": HOSTILE})]) + "\n")
    return path


def write_pdf(path: Path) -> Path:
    """Two pages: a word hyphenated across lines, then a paragraph over lines and another."""
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "The council voted to restore the exam-\nple depot.")
    page = pdf.new_page()
    page.insert_textbox(pymupdf.Rect(72, 72, 300, 300), ARTICLE[1])  # wraps over lines
    page.insert_text((72, 400), "Local historians welcomed it.")
    pdf.set_metadata({"title": "Depot minutes"})
    pdf.save(path)
    return path


def write_docx(path: Path) -> Path:
    docx = pytest.importorskip("docx", reason=NEEDS_DOCS)
    document = docx.Document()
    document.core_properties.title = "Depot report"
    document.add_heading("The depot", level=1)
    document.add_paragraph(ARTICLE[0])
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("year", "visitors"), ("2024", "1,200")], strict=True):
        for cell, value in zip(row.cells, cells, strict=True):
            cell.text = value
    document.add_paragraph(ARTICLE[1])
    document.save(path)
    return path


def write_html(path: Path) -> Path:
    """An article inside the menus, banners and footers of a real news page."""
    paragraphs = "".join(f"<p>{p}</p>" for p in ARTICLE)
    path.write_text(
        "<html><head><title>Depot to become library | Town News</title></head><body>"
        '<nav><a href="/">Home</a> <a href="/sport">Sport</a> <a href="/weather">Weather</a></nav>'
        '<div class="cookie-banner">We use cookies to improve your experience. Accept all</div>'
        f"<main><article><h1>Depot to become library</h1>{paragraphs}</article></main>"
        "<aside><h3>Most read</h3><ul><li>Storm warning for the coast</li></ul></aside>"
        "<footer>Copyright 2024 Town News. Subscribe to our newsletter.</footer></body></html>",
        encoding="utf-8",
    )
    return path


# Runs and run stores


def generate_passages_run(model: Path, folder: Path, *extra) -> Path:
    """`bonito generate` of ynqa, nli and exqa over `write_passages` with `model` (the engine
    named transformers): the run folder."""
    out = folder / "run"
    bonito(
        "generate",
        write_passages(folder),
        *("-t", "ynqa", "-t", "nli", "-t", "exqa"),
        *("--model", model, "--engine", "transformers"),
        *("--max-tokens", 48, "--seed", 5, "--output", out),
        *extra,
    )
    return out


def make_config() -> dict:
    """The configuration of a two-type run as a run stores it, made by the library."""
    config = RunConfig(
        "tiny",
        (str(EXAMPLES),),
        TaskMix.parse(["ynqa", "nli"]),
        2,
        SamplingParams(n=1, temperature=0.5, top_p=0.95, max_tokens=64, seed=0),
    )
    return config.to_dict([found.to_dict() for found in input_prints(config.inputs)])


def make_store(folder: Path, contexts: int, per_request: int) -> None:
    """A real run store, written through RunStore, of `contexts` contexts (five per document),
    each asked for ynqa and nli, with `per_request` samples each, a random mix of accepted,
    duplicate and rejected tasks of random lengths."""
    rng = random.Random(0)
    folder.mkdir()
    store = RunStore(folder / "run.sqlite")
    store.put("config", make_config())
    store.add_contexts(
        [
            (i, f"doc{i // 5}", {"row": i}, "word " * rng.randint(20, 300), rng.randint(30, 400))
            for i in range(contexts)
        ],
        [
            PlannedRequest(i, slot, 0, kind, i)
            for i in range(contexts)
            for slot, kind in ((0, "ynqa"), (1, "nli"))
        ],
    )
    statuses = [("accepted", None), ("duplicate", "1-0"), ("rejected", "not_yes_no")]
    samples = [
        SavedSample(
            request,
            sample,
            "text",
            "stop",
            90,
            rng.randint(4, 64),
            "Is it? " * rng.randint(2, 80),
            "yes",
            *rng.choice(statuses),
        )
        for request in range(1, 2 * contexts + 1)
        for sample in range(per_request)
    ]
    store.save(samples, 5.0)
    store.put("reading", {"documents": contexts // 5, "skipped": {}})
    store.put("state", "finished")
    store.close()


def store_tasks(run: Path, *statuses: str) -> list[dict]:
    store = RunStore(run / "run.sqlite", readonly=True)
    try:
        return list(store.tasks(statuses or ("accepted", "rejected", "duplicate")))
    finally:
        store.close()


def query(folder: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(folder / "run.sqlite", timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def done_requests(folder: Path) -> int:
    try:
        return query(folder, "SELECT COUNT(*) FROM requests WHERE status = 'done'")[0][0]
    except sqlite3.Error:  # not created yet
        return 0


def tasks_of(folder: Path) -> list[tuple]:
    return query(
        folder,
        "SELECT request_id, sample, input, output, status, reason FROM tasks "
        "ORDER BY request_id, sample",
    )


# The browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_selenium = pytest.mark.skipif(
    importlib.util.find_spec("selenium") is None,
    reason="the browser test needs selenium (pip install selenium)",
)
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="the browser test needs Debian's chromium and chromium-driver (apt-get install)",
)
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync"
).split()


# Prompts of several lengths, for the engine tests.
ENGINE_PASSAGES = [
    "Short one.",
    "A longer passage about rivers, which carry water and sediment from hills to the sea.",
    "Bakers rise early. The ovens are lit before dawn and the first loaves are sold at six.",
    "The committee met twice. It approved the budget but postponed the vote on new members "
    "until the spring, when more of them could attend in person.",
    "Glaciers move slowly.",
]
ENGINE_PROMPTS = [build_prompt(p, t) for p in ENGINE_PASSAGES for t in ("ynqa", "nli")]


GREEDY = SamplingParams(temperature=0, max_tokens=40, seed=3)


def run_config(model, passages, sampling=GREEDY, limit=6) -> RunConfig:
    return RunConfig(
        str(model),
        (str(passages),),
        TaskMix.parse(["ynqa", "nli"]),
        1,
        sampling,
        Reading(limit=limit),
    )


def completions_of(folder: Path) -> list[tuple]:
    return query(
        folder,
        "SELECT request_id, sample, text, finish_reason, prompt_tokens, completion_tokens "
        "FROM completions ORDER BY request_id, sample",
    )


def counts_of(folder: Path) -> tuple[int, int, int, int]:
    """Requests done, requests failed, completions, distinct (request, sample) completions."""
    return query(
        folder,
        "SELECT (SELECT COUNT(*) FROM requests WHERE status = 'done'), "
        "(SELECT COUNT(*) FROM requests WHERE status = 'failed'), COUNT(*), "
        "COUNT(DISTINCT request_id || '-' || sample) FROM completions",
    )[0]


def run_through_a_crash(server, folder, config, load, **start):
    """generate_run through `server`, killed once three requests are done and started again;
    the outcome, and how many requests were done when it was killed."""
    at_kill = []

    def crash_and_restart():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if counts_of(folder)[0] >= 3:
                    break
            except sqlite3.Error:
                pass
            time.sleep(0.02)
        server.kill()
        at_kill.append(counts_of(folder)[0])
        time.sleep(1)
        server.start(**start)

    crasher = threading.Thread(target=crash_and_restart)
    try:
        crasher.start()
        outcome = generate_run(folder, config, load, engine_name="openai")
    finally:
        crasher.join()
        if not server.ready():
            server.start(**start)
    return outcome, at_kill[0]
