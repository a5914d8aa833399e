"""Runs that survive: the SQLite store, resume after SIGKILL, the lock, budgets, retries, task
mixes and write failures, with real `bonito generate` processes; the tiny generator where the
engine matters (batch sizes) or a process must load it (a full disk), else the scripted engine
or a fake server."""

import fcntl
import hashlib
import json
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fake_engine import ScriptedEngine, plausible, scripted_engines, stalling_bonito, yes_no
from helpers import (
    BONITO,
    bonito,
    done_requests,
    example_texts,
    query,
    run_cli,
    tasks_of,
    wait_for,
)
from servers import http_server

from bonito import BonitoError, SamplingParams
from bonito.engines import Failure
from bonito.engines.openai import PROBE_PROMPT
from bonito.generate.mix import TaskMix
from bonito.publish.report import write_report
from bonito.read.config import Reading
from bonito.read.sources import InputPrint
from bonito.runs.run import Run, RunConfig, generate_run, status
from bonito.runs.store import PlannedRequest, RunStore, SavedSample


@pytest.fixture(scope="module")
def passages(tmp_path_factory) -> Path:
    """A few hundred distinct passages made from the examples."""
    texts = example_texts()
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    lines = [json.dumps({"text": f"Note {i}. {texts[i % len(texts)]}"}) for i in range(240)]
    path.write_text("\n".join(lines) + "\n")
    return path


def generate_args(passages, model, out, *extra):
    return [
        "generate",
        str(passages),
        "-t",
        "ynqa:2,nli",
        "--per-context",
        "1",
        "--model",
        str(model),
        "--engine",
        "transformers",
        "--max-tokens",
        "48",
        "--seed",
        "5",
        "--output",
        str(out),
        *map(str, extra),
    ]


@pytest.mark.heavy  # starts processes
def test_killed_run_resumes_with_nothing_lost_or_repeated(tokenizer_model, passages, tmp_path):
    """SIGKILL mid-run (its engine stalled after 64 prompts), a second process refused
    meanwhile, then the same command again: one completion per (request, sample) and the same
    tasks as a run never interrupted."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    slow = ["--batch-size", "4"]
    with scripted_engines():
        bonito(*generate_args(passages, tokenizer_model, whole, *slow))

    first = subprocess.Popen(
        stalling_bonito(64) + generate_args(passages, tokenizer_model, killed, *slow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: done_requests(killed) >= 4)
        second = subprocess.run(
            BONITO + generate_args(passages, tokenizer_model, killed, *slow),
            capture_output=True,
            text=True,
        )
        assert first.poll() is None, "the first run ended before the second was tried"
        assert second.returncode == 1
        assert "is in use by another bonito process" in second.stderr
        running = subprocess.run(BONITO + ["status", str(killed)], capture_output=True, text=True)
        assert first.poll() is None
        assert "running" in running.stdout and "requests/s over the last minute" in running.stdout
        assert "eta" in running.stdout
        wait_for(lambda: done_requests(killed) >= 60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    at_kill = done_requests(killed)
    assert 60 <= at_kill < 240, at_kill

    status = subprocess.run(BONITO + ["status", str(killed)], capture_output=True, text=True)
    assert status.returncode == 0 and "interrupted" in status.stdout

    with scripted_engines():
        bonito(*generate_args(passages, tokenizer_model, killed, *slow))
    for folder in (whole, killed):
        requests, samples, distinct = query(
            folder,
            "SELECT (SELECT COUNT(*) FROM requests), COUNT(*), "
            "COUNT(DISTINCT request_id || '-' || sample) FROM completions",
        )[0]
        assert requests == 240 and samples == distinct == 240
        assert query(folder, "SELECT COUNT(*) FROM requests WHERE status != 'done'")[0][0] == 0
    assert tasks_of(killed) == tasks_of(whole)
    lines = (killed / "tasks.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == sum(1 for t in tasks_of(whole) if t[4] == "accepted")
    assert sorted(lines) == sorted((whole / "tasks.jsonl").read_text().splitlines())


def flaky(prompt: str, seed: int, sample: int):
    """`plausible`, except that every fifth note fails, as a server that keeps failing does."""
    note = int(re.search(r"Note (\d+)\.", prompt).group(1))
    return Failure("HTTP 503") if note % 5 == 0 else plausible(prompt, seed, sample)


def test_failed_requests_are_recorded_and_sent_again_on_resume(tokenizer_model, passages, tmp_path):
    engine = ScriptedEngine(str(tokenizer_model))
    mix = TaskMix.parse(["ynqa"])
    config = RunConfig(
        str(tokenizer_model),
        (str(passages),),
        mix,
        1,
        SamplingParams(max_tokens=32, seed=1),
        Reading(limit=30),
    )
    run = tmp_path / "run"
    first = generate_run(run, config, lambda: ScriptedEngine(str(tokenizer_model), flaky))
    note = "6 requests failed (last error: HTTP 503); run the same command to retry them."
    assert (first.state, first.summary.failed, first.error) == ("finished", 6, note)
    failed = query(run, "SELECT error FROM requests WHERE status = 'failed'")
    assert failed == [("HTTP 503",)] * 6
    assert first.summary.samples == 24
    summary = json.loads((run / "summary.json").read_text())["summary"]
    assert (summary["failed_requests"], summary["last_error"]) == (6, "HTTP 503")
    lines = status(run)
    assert (lines["failed requests"], lines["last error"]) == ("6", "HTTP 503")
    html = (write_report(run)).path.read_text()
    assert note in html and "not finished" not in html

    again = generate_run(run, config, lambda: engine)
    assert again.state == "finished" and again.summary.samples == 30
    assert again.error is None and "last error" not in status(run)
    assert json.loads((run / "summary.json").read_text())["summary"]["failed_requests"] == 0
    samples, distinct = query(
        tmp_path / "run",
        "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM completions",
    )[0]
    assert samples == distinct == 30


def test_budgets_stop_cleanly_and_a_larger_one_continues(
    tokenizer_model, scripted, passages, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = generate_args(passages, tokenizer_model, out, "--no-checks", "--dedup", "off")
    code, stdout, err = run_cli([*args, "--max-tasks", 5], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "stopped: max_tasks (--max-tasks) 5 reached"
    assert summary["summary"]["accepted"] == 5
    assert len((out / "tasks.jsonl").read_text().splitlines()) == 5
    pending = query(out, "SELECT COUNT(*) FROM requests WHERE status = 'pending'")[0][0]
    assert pending > 200  # the rest waits, not lost

    code, _, err = run_cli([*args, "--max-tasks", 12], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["summary"]["accepted"] == 12

    code, _, err = run_cli([*args, "--max-output-tokens", 2000], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "stopped: max_output_tokens (--max-output-tokens) 2000 reached"
    tokens = summary["summary"]["output_tokens"]
    assert 2000 <= tokens < 2000 + 48  # stops at the request that reached it


def test_retry_rejected_asks_again_at_most_k_times(
    tokenizer_model, scripted, passages, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = generate_args(passages, tokenizer_model, out, "--limit", 24, "--retry-rejected", 2)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    per_context = query(
        out,
        "SELECT r.context_id, MAX(r.attempt), "
        "SUM(EXISTS (SELECT 1 FROM tasks t WHERE t.request_id = r.id AND t.status = 'accepted')) "
        "FROM requests r GROUP BY r.context_id",
    )
    assert len(per_context) == 24
    assert all(attempts <= 2 for _, attempts, _ in per_context)
    assert any(attempts > 0 for _, attempts, _ in per_context)
    # a context was asked again only while it had no accepted task
    for context, attempts, accepted in per_context:
        if accepted == 0:
            assert attempts == 2, context
    retried = query(
        out,
        "SELECT r.context_id, r.attempt FROM requests r WHERE r.attempt > 0 AND EXISTS ("
        "SELECT 1 FROM requests q JOIN tasks t ON t.request_id = q.id "
        "WHERE q.context_id = r.context_id AND q.attempt < r.attempt AND t.status = 'accepted')",
    )
    assert retried == []


def unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True
    )
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not unshare_available(),
    reason="needs `unshare -r -m` (user and mount namespaces) to mount a small filesystem",
)


@needs_unshare
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ("size=64k", "Cannot write {run}: the disk is full; free some disk space, then run the "
         "same command again to continue, or choose another folder (--output)."),
        ("ro", "Cannot write in {mount}: read-only file system; choose a writable folder "
         "(--output)."),
    ],
)  # fmt: skip
def test_full_disk_or_read_only_folder_is_one_clear_message(
    tiny_model, passages, tmp_path, options, error
):
    mount = tmp_path / "mount"
    mount.mkdir()
    command = " ".join(
        f"'{part}'" for part in BONITO + generate_args(passages, tiny_model, mount / "run")
    )
    result = subprocess.run(
        [
            "unshare",
            "-r",
            "-m",
            "sh",
            "-c",
            f"mount -t tmpfs -o {options} none {mount} && exec {command}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert error.format(run=mount / "run", mount=mount) in result.stderr
    assert "Traceback" not in result.stderr


def test_mix_parses_weights_all_and_refuses_mistakes():
    mix = TaskMix.parse(["ynqa:2,exqa", "nli:0.5"])
    assert mix.to_dict() == {"ynqa": 2.0, "exqa": 1.0, "nli": 0.5}
    assert len(TaskMix.parse(["all"]).types) == 16
    for values, message in [
        (["ynqa", "yes-no question answering"], "given twice"),
        (["ynqa:0"], "must be a positive number"),
        (["ynqa:x"], "must be a positive number"),
        ([" "], r"No task type given; name at least one \(--task-type\)"),
        (["ynq"], "Did you mean 'ynqa'"),
    ]:
        with pytest.raises(BonitoError, match=message):
            TaskMix.parse(values)
    with pytest.raises(
        BonitoError, match=r"per_context \(--per-context\) must be between 1 and the 3"
    ):
        mix.check_per_context(4)


def test_mix_assignment_is_seeded_and_follows_the_weights():
    mix = TaskMix.parse(["ynqa:2,exqa:1"])
    drawn = [mix.assign(1, 0, context)[0].short for context in range(3000)]
    assert drawn == [mix.assign(1, 0, context)[0].short for context in range(3000)]
    assert drawn != [mix.assign(1, 1, context)[0].short for context in range(3000)]
    share = Counter(drawn)["ynqa"] / len(drawn)
    assert 0.63 < share < 0.70  # 2/3
    assert [t.short for t in mix.assign(2, 0, 7)] == ["ynqa", "exqa"]


def test_store_is_wal_and_saves_each_sample_once(tmp_path):
    store = RunStore(tmp_path / "run.sqlite")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.add_contexts(
        [(0, "d", {"file": "f"}, "A passage.", 3)], [PlannedRequest(0, 0, 0, "ynqa", 1)]
    )
    [request] = store.next_chunk(16)
    sample = SavedSample(
        request.id, 0, "x <|pipe|> yes", "stop", 9, 4, "x", "yes", "accepted", None
    )
    store.save([sample], 0.5)
    assert store.next_chunk(16) == []
    with pytest.raises(sqlite3.IntegrityError):
        store.save([sample], 0.5)
    assert store.counts()["samples"] == 1 and store.counts()["accepted"] == 1
    [task] = store.tasks()
    assert task["id"] == f"{request.id}-0" and task["source"] == {"file": "f"}
    store.close()
    reader = RunStore(tmp_path / "run.sqlite", readonly=True)
    assert reader.counts()["requests_done"] == 1
    reader.close()


def test_status_of_a_folder_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["status", tmp_path], capsys, monkeypatch)
    assert code == 1 and "is not a bonito run" in err and "Traceback" not in err


def test_status_of_a_finished_run(
    tokenizer_model, scripted, passages, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert (
        run_cli(generate_args(passages, tokenizer_model, out, "--limit", 6), capsys, monkeypatch)[0]
        == 0
    )
    code, stdout, _ = run_cli(["status", out], capsys, monkeypatch)
    assert code == 0
    assert "finished" in stdout and "6/6 requests (100.0%)" in stdout


def test_no_checks_alone_is_the_original_behaviour(
    tokenizer_model, scripted, passages, tmp_path, capsys, monkeypatch
):
    """--no-checks keeps every parseable sample: no task checks and no dedup."""
    out = tmp_path / "run"
    args = generate_args(passages, tokenizer_model, out, "--no-checks", "--limit", 12, "--n", 2)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["checks"] is False
    assert summary["config"]["dedup"]["mode"] == "off"
    counts = summary["summary"]
    assert counts["duplicates"] == 0
    assert set(counts["rejected"]) <= {"no_pipe", "several_pipes", "empty_input", "empty_output"}
    assert counts["accepted"] + sum(counts["rejected"].values()) == counts["samples"] == 24


def plan_of(folder: Path) -> list[tuple]:
    """Every context with its requests: ids, document, text, slot, task type and seed."""
    return query(
        folder,
        "SELECT c.id, c.document, c.text, r.id, r.slot, r.attempt, r.task_type, r.seed "
        "FROM contexts c JOIN requests r ON r.context_id = c.id ORDER BY r.id",
    )


def test_a_larger_limit_continues_the_run_as_if_asked_at_once(
    tokenizer_model, scripted, passages, tmp_path, capsys, monkeypatch, caplog
):
    direct, grown = tmp_path / "direct", tmp_path / "grown"
    assert (
        run_cli(
            generate_args(passages, tokenizer_model, direct, "--limit", 7), capsys, monkeypatch
        )[0]
        == 0
    )
    assert (
        run_cli(generate_args(passages, tokenizer_model, grown, "--limit", 4), capsys, monkeypatch)[
            0
        ]
        == 0
    )
    first = query(grown, "SELECT request_id, sample, text, finished_at FROM completions")
    code, _, err = run_cli(
        generate_args(passages, tokenizer_model, grown, "--limit", 7), capsys, monkeypatch
    )
    assert code == 0, err
    assert plan_of(grown) == plan_of(direct) and len(plan_of(grown)) == 7
    assert tasks_of(grown) == tasks_of(direct)
    after = query(grown, "SELECT request_id, sample, text, finished_at FROM completions")
    assert after[: len(first)] == first  # kept as they were, not generated again
    summary = json.loads((grown / "summary.json").read_text())["summary"]
    assert summary["documents"] == summary["contexts"] == 7

    code, stdout, err = run_cli(
        generate_args(passages, tokenizer_model, grown, "--limit", 3), capsys, monkeypatch
    )
    assert code == 0, err
    assert (
        f"{grown} holds 7 contexts, more than limit (--limit) 3: it keeps them all" in caplog.text
    )
    assert plan_of(grown) == plan_of(direct) and "loading" not in err


def test_limit_counts_the_documents_it_reached_and_the_skips_before_the_next_context(
    tokenizer_model, scripted, tmp_path, capsys, monkeypatch
):
    """The chunker reads ahead in batches; documents read ahead are not counted, and a skip
    reached before the context after the last one is written and counted."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "d.txt", "e.txt"):
        (folder / name).write_text(f"The note {name} says the depot opens at nine every day.")
    (folder / "c.csv").write_text("body\nA row without the text column.\n")
    out = tmp_path / "run"
    args = generate_args(folder, tokenizer_model, out, "--limit", 2)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert (summary["documents"], summary["contexts"]) == (2, 2)
    assert summary["skipped"] == {"missing_field": 1}
    [skip] = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skip["source"] == str(folder / "c.csv") and skip["reason"] == "missing_field"
    code, stdout, _ = run_cli(["status", out], capsys, monkeypatch)
    assert code == 0 and re.search(r"documents\W+(\d+)", stdout).group(1) == "2"
    code, _, err = run_cli(generate_args(folder, tokenizer_model, out), capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert (summary["documents"], summary["contexts"]) == (4, 4)


@pytest.fixture
def long_documents(tmp_path) -> Path:
    """Three documents of several contexts each (at --max-context-tokens 64)."""
    folder = tmp_path / "long"
    folder.mkdir()
    sentence = "The depot opens at nine every day and closes at five on weekdays. "
    for name in ("a", "b", "c"):
        paragraphs = [f"Paragraph {i} of {name}. " + sentence * 6 for i in range(6)]
        (folder / f"{name}.txt").write_text("\n\n".join(paragraphs))
    return folder


def test_per_document_reads_the_first_contexts_of_each_document_and_counts_the_rest(
    tokenizer_model, scripted, long_documents, tmp_path, capsys, monkeypatch
):
    """--limit alone takes every context of the first document; with --per-document the
    contexts spread over the documents, the larger --limit still reads on as if asked at once,
    and the contexts left out are counted."""

    def run(out, *extra):
        args = generate_args(
            long_documents, tokenizer_model, out, "--max-context-tokens", 64, *extra
        )
        code, stdout, err = run_cli(args, capsys, monkeypatch)
        assert code == 0, err
        return stdout

    def documents(out):
        return [Path(document).stem for _, document, *_ in plan_of(out)]

    run(tmp_path / "first", "--limit", 5)
    assert documents(tmp_path / "first") == ["a"] * 5
    direct, grown = tmp_path / "direct", tmp_path / "grown"
    stdout = run(direct, "--limit", 5, "--per-document", 2)
    assert documents(direct) == ["a", "a", "b", "b", "c"]
    run(grown, "--limit", 3, "--per-document", 2)
    run(grown, "--limit", 5, "--per-document", 2)
    assert plan_of(grown) == plan_of(direct) and tasks_of(grown) == tasks_of(direct)
    contexts = tmp_path / "contexts.jsonl"
    chunk = [
        "chunk",
        long_documents,
        "--model",
        tokenizer_model,
        "--max-tokens",
        64,
        "-o",
        contexts,
    ]
    assert run_cli(chunk, capsys, monkeypatch)[0] == 0
    per_document = Counter(Path(json.loads(line)["file"]).stem for line in contexts.open())
    left_out = per_document["a"] - 2 + per_document["b"] - 2  # c's were not reached
    summary = json.loads((grown / "summary.json").read_text())["summary"]
    assert (summary["documents"], summary["contexts"], summary["capped"]) == (3, 5, left_out)
    assert re.search(rf"left out\W+{left_out} contexts past --per-document", stdout)
    code, stdout, _ = run_cli([*chunk, "--limit", 5, "--per-document", 2], capsys, monkeypatch)
    assert code == 0 and re.search(rf"left out\W+{left_out} contexts", stdout)
    chunked = [json.loads(line)["text"] for line in contexts.open()]
    assert chunked == [text for _, _, text, *_ in plan_of(direct)]


def test_changing_per_document_on_a_run_is_a_configuration_change(
    tokenizer_model, scripted, long_documents, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = generate_args(long_documents, tokenizer_model, out, "--limit", 2, "--per-document")
    assert run_cli([*args, 1], capsys, monkeypatch)[0] == 0
    code, _, err = run_cli([*args, 2], capsys, monkeypatch)
    assert code == 1 and "reading.per_document: 1 -> 2" in err
    code, _, err = run_cli([*args, 0], capsys, monkeypatch)
    assert code == 1 and "per_document (--per-document) must be at least 1, got 0." in err


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "drafts").mkdir(parents=True)
    (folder / "a.md").write_text("The depot opens at nine and closes at five on weekdays.")
    (folder / "b.txt").write_text("Cyclists should carry lights after dark on the road.")
    (folder / "drafts" / "todo.txt").write_text("Not ready to be read.")
    return folder


def corpus_args(inputs, model, out, *extra):
    return [
        "generate",
        inputs,
        "--exclude",
        "drafts/*",
        "-t",
        "ynqa",
        "--model",
        model,
        "--engine",
        "transformers",
        "--max-tokens",
        16,
        "--output",
        out,
        *extra,
    ]


def resumes_with_nothing_to_do(args, out: Path, capsys, monkeypatch) -> bool:
    tasks = (out / "tasks.jsonl").read_text()
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    return "loading" not in err and (out / "tasks.jsonl").read_text() == tasks


def test_an_excluded_file_is_not_part_of_the_inputs(
    tokenizer_model, scripted, corpus, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = corpus_args(corpus, tokenizer_model, out)
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    with (corpus / "drafts" / "todo.txt").open("a") as excluded:
        excluded.write("More.\n")
    assert resumes_with_nothing_to_do(args, out, capsys, monkeypatch)
    inputs = json.loads((out / "summary.json").read_text())["config"]["inputs"]
    read = sum(len((corpus / name).read_bytes()) for name in ("a.md", "b.txt"))
    assert inputs[0]["bytes"] == read


def test_a_run_inside_its_input_folder_does_not_read_itself(
    tokenizer_model, scripted, corpus, capsys, monkeypatch
):
    out = corpus / "run"
    args = corpus_args(corpus, tokenizer_model, out)
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    assert (out / "skipped.jsonl").read_text() == ""
    assert query(out, "SELECT document FROM contexts") == [
        (str(corpus / "a.md"),),
        (str(corpus / "b.txt"),),
    ]
    assert resumes_with_nothing_to_do(args, out, capsys, monkeypatch)


def test_a_run_resumes_from_another_working_directory(
    tokenizer_model, scripted, corpus, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert run_cli(corpus_args("corpus", tokenizer_model, out), capsys, monkeypatch)[0] == 0
    for cwd, inputs in [(corpus, "."), (corpus / "drafts", ".."), (tmp_path, corpus)]:
        monkeypatch.chdir(cwd)
        args = corpus_args(inputs, tokenizer_model, out)
        assert resumes_with_nothing_to_do(args, out, capsys, monkeypatch), cwd


def test_a_changed_input_is_named_file_by_file(
    tokenizer_model, scripted, corpus, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert run_cli(corpus_args(corpus, tokenizer_model, out), capsys, monkeypatch)[0] == 0
    (corpus / "new.md").write_text("A new note about the depot.")
    (corpus / "a.md").write_text("The depot now opens at ten.")
    (corpus / "b.txt").unlink()
    code, _, err = run_cli(corpus_args(corpus, tokenizer_model, out), capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert f"{out} holds a run with another configuration:" in err
    for line in ("a.md was modified", "b.txt was removed", "new.md was added"):
        assert f"{corpus / line}" in err
    assert "blake2b" not in err and "pass overwrite=True (--overwrite) to start over" in err


def test_a_run_that_generated_nothing_takes_another_configuration(
    tokenizer_model, passages, tmp_path, caplog
):
    """An engine that failed to load leaves a run read and planned but with nothing generated:
    the next command, with another configuration, simply takes the folder over."""

    def broken():
        raise BonitoError("The engine failed to load.")

    config = RunConfig(
        str(tokenizer_model),
        (str(passages),),
        TaskMix.parse(["ynqa"]),
        1,
        SamplingParams(max_tokens=32),
        Reading(limit=3),
    )
    with pytest.raises(BonitoError, match="failed to load"):
        generate_run(tmp_path / "run", config, broken)
    fixed = RunConfig(
        str(tokenizer_model),
        (str(passages),),
        TaskMix.parse(["ynqa"]),
        1,
        SamplingParams(max_tokens=16),
        Reading(limit=3),
    )
    engine = ScriptedEngine(str(tokenizer_model))
    with caplog.at_level("INFO", logger="bonito"):
        outcome = generate_run(tmp_path / "run", fixed, lambda: engine)
    assert outcome.state == "finished" and outcome.summary.samples == 3
    assert "nothing was generated yet; starting it over" in caplog.text
    changed = RunConfig(
        str(tokenizer_model),
        (str(passages),),
        TaskMix.parse(["ynqa"]),
        1,
        SamplingParams(max_tokens=24),
        Reading(limit=3),
    )
    with pytest.raises(BonitoError, match="sampling.max_tokens: 16 -> 24"):
        generate_run(tmp_path / "run", changed, lambda: engine)


def digest(body: dict, k: int) -> int:
    """A number fixed by a request's prompt and seed and the sample's index."""
    key = f"{body['prompt']}|{body.get('seed')}|{k}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


class ShuffledServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose answer is fixed by the prompt, seed and sample (one of
    three tasks on the passage, so the requests of a context often repeat each other), sent
    after a random delay: requests in flight finish in a random order."""

    TASKS = ("Is it true? {{context}} <|pipe|> Yes", "Is it false? {{context}} <|pipe|> No")

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.reply({"data": [{"id": "tiny"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["prompt"] == PROBE_PROMPT:
            self.reply({"choices": [{"text": "x", "finish_reason": "length"}] * body["n"]})
            return
        time.sleep(random.uniform(0, 0.03))
        if self.fails(body):
            self.reply({"error": {"message": "flaky"}}, 500)
        else:
            self.reply({"choices": [self.choice(body, k) for k in range(body.get("n", 1))]})

    def fails(self, body: dict) -> bool:
        return False

    def choice(self, body: dict, k: int) -> dict:
        pick = digest(body, k) % (len(self.TASKS) + 1)
        text = self.TASKS[pick] if pick < len(self.TASKS) else "Notes? <|pipe|> Notes"
        return {"text": text, "finish_reason": "stop"}

    def reply(self, payload: dict, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FlakyServer(ShuffledServer):
    """The same answers, but a fixed fifth of the requests fail with HTTP 500."""

    def fails(self, body: dict) -> bool:
        return digest(body, -1) % 5 == 0


def test_the_same_tasks_are_kept_whatever_order_requests_finish_in(
    tokenizer_model, passages, tmp_path, capsys, monkeypatch
):
    tasks = []
    with http_server(ShuffledServer) as url:
        for name in ("a", "b"):
            out = tmp_path / name
            args = ["generate", passages, "-t", "ynqa,qa,exqa,qg", "--per-context", 4]
            args += ["--model", tokenizer_model, "--engine", "openai", "--base-url", url]
            args += ["--concurrency", 16, "--limit", 40, "--no-checks", "--dedup", "near"]
            args += ["--output", out]
            code, _, err = run_cli(args, capsys, monkeypatch)
            assert code == 0, err
            assert json.loads((out / "summary.json").read_text())["summary"]["duplicates"] > 40
            tasks.append((out / "tasks.jsonl").read_text())
    assert tasks[0] == tasks[1]


def test_retry_rejected_waits_for_the_requests_that_failed(
    tokenizer_model, passages, tmp_path, capsys, monkeypatch
):
    args = ["generate", passages, "-t", "ynqa", "--model", tokenizer_model, "--engine", "openai"]
    args += ["--concurrency", 8, "--limit", 40, "--retry-rejected", 1, "--max-retries", 0]
    tasks = {}
    for name, servers in (("steady", [ShuffledServer]), ("flaky", [FlakyServer, ShuffledServer])):
        for server in servers:
            with http_server(server) as url:
                code, _, err = run_cli(
                    [*args, "--base-url", url, "--output", tmp_path / name], capsys, monkeypatch
                )
            assert code == (1 if server is FlakyServer else 0), err
        lines = (tmp_path / name / "tasks.jsonl").read_text().splitlines()
        tasks[name] = Counter(
            (t["context"], t["input"], t["output"]) for t in map(json.loads, lines)
        )
    assert query(tmp_path / "flaky", "SELECT COUNT(*) FROM requests WHERE attempt = 1")[0][0]
    assert tasks["flaky"] == tasks["steady"]
    assert max(Counter(context for context, _, _ in tasks["flaky"].elements()).values()) == 1


@pytest.fixture(scope="module")
def finished(tokenizer_model, passages, tmp_path_factory) -> Path:
    """A small finished run, to copy and damage."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with scripted_engines():
        bonito(*generate_args(passages, tokenizer_model, out, "--limit", 3, "--no-checks"))
    return out


def copied(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


@pytest.fixture
def immutable():
    """Make folders read-only even for root (`chattr +i`), undone at the end."""
    made = []

    def make(folder: Path) -> None:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("needs `chattr +i` to make a read-only folder")
        made.append(folder)

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def read_commands(run: Path, tmp_path: Path) -> list[list]:
    return [
        ["status", run],
        ["export", run, "-o", tmp_path / "dataset"],
        ["report", run, "-o", tmp_path / "report.html"],
    ]


def test_status_export_and_report_read_a_read_only_run(
    finished, tmp_path, capsys, monkeypatch, immutable
):
    run = copied(finished, tmp_path)
    immutable(run)
    for args in read_commands(run, tmp_path):
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 0, (args, err)
    assert (tmp_path / "report.html").exists() and (tmp_path / "dataset").is_dir()


@pytest.mark.parametrize("size", [0.5, 200])
def test_a_damaged_store_is_one_sentence(
    finished, passages, tokenizer_model, scripted, tmp_path, capsys, monkeypatch, size
):
    """Half of it (or only its first bytes): every command says which file and what to do."""
    run = copied(finished, tmp_path)
    store = run / "run.sqlite"
    data = store.read_bytes()
    store.write_bytes(data[: int(len(data) * size) if size < 1 else size])
    generate = generate_args(passages, tokenizer_model, run, "--limit", 3, "--no-checks")
    for args in [generate, *read_commands(run, tmp_path)]:
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 1, (args, err)
        assert f"{store} is damaged (" in err and "Traceback" not in err, (args, err)
        assert (
            "restore it, or start the run over with overwrite=True" in err
            and "disk space" not in err
        )


def test_an_emptied_store_beside_its_tasks_is_refused(
    finished, passages, tokenizer_model, scripted, tmp_path, capsys, monkeypatch
):
    run = copied(finished, tmp_path)
    (run / "run.sqlite").write_bytes(b"")
    tasks = (run / "tasks.jsonl").read_text()
    generate = generate_args(passages, tokenizer_model, run, "--limit", 3, "--no-checks")
    code, _, err = run_cli(generate, capsys, monkeypatch)
    assert code == 1 and "run.sqlite is damaged (it is empty, beside tasks.jsonl)" in err
    assert (run / "tasks.jsonl").read_text() == tasks
    code, _, err = run_cli(["status", run], capsys, monkeypatch)
    assert code == 1 and "run.sqlite is damaged (" in err
    assert run_cli([*generate, "--overwrite"], capsys, monkeypatch)[0] == 0


def run_config(run: Path) -> tuple[dict, list[InputPrint]]:
    """The configuration and inputs a run was started with, to open it again."""
    meta = dict(query(run, "SELECT key, value FROM meta WHERE key IN ('config', 'inputs')"))
    return json.loads(meta["config"]), [InputPrint(**x) for x in json.loads(meta["inputs"])]


def test_generate_starts_while_status_looks_at_the_lock(finished, tmp_path):
    """`bonito status` tests the lock (a shared lock for an instant); a `generate` starting
    then waits for it instead of being refused."""
    run = copied(finished, tmp_path)
    (run / "run.lock").unlink()
    assert status(run)["state"] == "finished" and not (run / "run.lock").exists()
    config, inputs = run_config(run)
    (run / "run.lock").touch()
    with open(run / "run.lock") as probe:
        fcntl.flock(probe, fcntl.LOCK_SH)
        threading.Timer(0.3, fcntl.flock, (probe, fcntl.LOCK_UN)).start()
        with Run(run, config, inputs):
            assert status(run)["state"] == "running"
    assert status(run)["state"] == "finished"


def test_a_run_whose_folder_is_replaced_stops_writing_there(finished, tmp_path):
    """The lock lives in the folder: a folder deleted under a live run and started again is
    another run's, and the old process must not write its summary.json there."""
    run = copied(finished, tmp_path)
    config, inputs = run_config(run)
    with Run(run, config, inputs) as old:
        shutil.rmtree(run)
        with pytest.raises(BonitoError, match="was deleted or replaced while this run"):
            old.write_summary("finished")
        shutil.copytree(finished, run)
        (run / "summary.json").write_text("the new run's\n")
        with pytest.raises(BonitoError, match="was deleted or replaced while this run"):
            old.write_summary("finished")
    assert (run / "summary.json").read_text() == "the new run's\n"


def test_status_after_the_wal_was_deleted_under_a_writer(finished, tmp_path, capsys, monkeypatch):
    run = copied(finished, tmp_path)
    writer = RunStore(run / "run.sqlite")
    try:
        writer.put("state", "running")
        (run / "run.sqlite-wal").unlink()
        code, _, err = run_cli(["status", run], capsys, monkeypatch)
    finally:
        writer.close()
    assert code == 1 and "Traceback" not in err
    assert f"Cannot read {run / 'run.sqlite'} (disk I/O error): run the command again" in err


KILLED_AT_THIRD_TASK = """
import os, signal, sys
import bonito.runs.run
from bonito.cli import main

written, record = [], bonito.runs.run.task_record
def killed_at_third(task):
    written.append(task)
    if len(written) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return record(task)
bonito.runs.run.task_record = killed_at_third
sys.argv = ["bonito", *sys.argv[1:]]
main()
"""


@pytest.mark.heavy  # starts a process
def test_a_kill_while_tasks_jsonl_is_rewritten_leaves_the_old_file_and_no_finished_summary(
    tokenizer_model, scripted, passages, tmp_path, capsys, monkeypatch
):
    """F3: a real SIGKILL in the middle of the rewrite a restarted run makes of tasks.jsonl."""
    out = tmp_path / "run"
    args = generate_args(
        passages, tokenizer_model, out, "--limit", 8, "--no-checks", "--dedup", "off"
    )
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    tasks = (out / "tasks.jsonl").read_text()
    finished = json.loads((out / "summary.json").read_text())
    assert len(tasks.splitlines()) == finished["summary"]["accepted"] >= 3  # parsed, of 8
    assert finished["state"] == "finished"

    killed = subprocess.run([sys.executable, "-c", KILLED_AT_THIRD_TASK, *map(str, args)])
    assert killed.returncode == -signal.SIGKILL
    assert (out / "tasks.jsonl").read_text() == tasks
    assert json.loads((out / "summary.json").read_text())["state"] == "running"

    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert (out / "tasks.jsonl").read_text() == tasks
    assert json.loads((out / "summary.json").read_text())["state"] == "finished"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_symlinks_in_a_run_folder_are_replaced_not_written_through(
    tokenizer_model, passages, tmp_path, capsys, monkeypatch
):
    """F18: a resume and a report replace links planted in the run folder, never the files
    they point to."""
    out = tmp_path / "run"
    args = generate_args(
        passages, tokenizer_model, out, "--limit", 4, "--no-checks", "--dedup", "off"
    )
    out.mkdir()
    (tmp_path / "victim-skipped.jsonl").write_text("keep me\n")
    (out / "skipped.jsonl").symlink_to(tmp_path / "victim-skipped.jsonl")
    with scripted_engines(yes_no):
        code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    victims = {"skipped.jsonl": tmp_path / "victim-skipped.jsonl"}
    for name in ("tasks.jsonl", "summary.json", "report.html"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("keep me\n")
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(victims[name])

    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    write_report(out)
    for name, victim in victims.items():
        assert victim.read_text() == "keep me\n"
        assert not (out / name).is_symlink()
    assert len((out / "tasks.jsonl").read_text().splitlines()) == 4
    store = tmp_path / "elsewhere.sqlite"
    (out / "run.sqlite").rename(store)
    (out / "run.sqlite").symlink_to(store)
    before = store.read_bytes()
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "run.sqlite is a symbolic link" in err
    assert store.read_bytes() == before


def test_a_file_written_whole_is_the_old_one_until_the_new_one_is_complete(tmp_path):
    from bonito.util.outputs import written_whole

    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), written_whole(path) as file:
        file.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]
    with written_whole(path) as file:
        file.write("new\n")
    assert path.read_text() == "new\n" and list(tmp_path.iterdir()) == [path]


def test_the_same_tasks_are_kept_whatever_the_batch_size(
    tiny_model, passages, tmp_path, capsys, monkeypatch
):
    """Batches of 1 and of 64 finish groups at different moments; with a loose threshold many
    tasks are near-duplicates, and which of a pair is kept must not depend on it."""
    tasks = []
    for size in (1, 64):
        out = tmp_path / str(size)
        args = ["generate", passages, "-t", "nli", "--n", 4, "--limit", 8]
        args += ["--model", tiny_model, "--engine", "transformers", "--max-tokens", 48]
        args += ["--no-checks", "--dedup", "near", "--dedup-threshold", 0.3]
        args += ["--batch-size", size, "--output", out]
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 0, err
        assert json.loads((out / "summary.json").read_text())["summary"]["duplicates"] > 5
        tasks.append((out / "tasks.jsonl").read_text())
    assert tasks[0] == tasks[1]
