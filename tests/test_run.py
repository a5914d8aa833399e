"""Runs that survive: the SQLite store, resume after SIGKILL, the lock, budgets, retries, task
mixes and write failures, with real `bonito generate` processes and the tiny generator."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from test_cli import run_cli

from bonito import BonitoError, SamplingParams
from bonito.engines import Failure
from bonito.engines.transformers import TransformersEngine
from bonito.mix import TaskMix
from bonito.run import RunConfig, generate_run
from bonito.store import PlannedRequest, RunStore, SavedSample

EXAMPLES = Path(__file__).parents[1] / "examples" / "passages.jsonl"
BONITO = [sys.executable, "-c", "from bonito.cli import main; main()"]


@pytest.fixture(scope="module")
def passages(tmp_path_factory) -> Path:
    """A few hundred distinct passages made from the examples."""
    texts = [json.loads(line)["text"] for line in EXAMPLES.read_text().splitlines()]
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


def test_killed_run_resumes_with_nothing_lost_or_repeated(tiny_model, passages, tmp_path):
    """SIGKILL mid-run, a second process refused meanwhile, then the same command again: one
    completion per (request, sample) and the same tasks as a run never interrupted."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    slow = ["--batch-size", "4"]
    finished = subprocess.run(
        BONITO + generate_args(passages, tiny_model, whole, *slow), capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr

    first = subprocess.Popen(
        BONITO + generate_args(passages, tiny_model, killed, *slow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: done_requests(killed) >= 4)
        second = subprocess.run(
            BONITO + generate_args(passages, tiny_model, killed, *slow),
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

    resumed = subprocess.run(
        BONITO + generate_args(passages, tiny_model, killed, *slow), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
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


class Flaky:
    """The tiny engine, except that it gives up on every fifth prompt it is sent, as an
    engine does when its server keeps failing."""

    name = "flaky"

    def __init__(self, engine):
        self.engine, self.model = engine, engine.model

    def generate(self, prompts, sampling, seeds=None):
        for group in self.engine.generate(prompts, sampling, seeds):
            yield [(i, Failure("HTTP 503") if i % 5 == 0 else c) for i, c in group]


def test_failed_requests_are_recorded_and_sent_again_on_resume(tiny_model, passages, tmp_path):
    engine = TransformersEngine(str(tiny_model), device="cpu")
    mix = TaskMix.parse(["ynqa"])
    config = RunConfig(
        str(tiny_model),
        (str(passages),),
        mix,
        1,
        SamplingParams(max_tokens=32, seed=1),
        reading={"limit": 30},
    )
    first = generate_run(tmp_path / "run", config, lambda: Flaky(engine))
    assert first.state == "finished: 6 requests failed"
    failed = query(tmp_path / "run", "SELECT error FROM requests WHERE status = 'failed'")
    assert failed == [("HTTP 503",)] * 6
    assert first.summary.samples == 24
    again = generate_run(tmp_path / "run", config, lambda: engine)
    assert again.state == "finished" and again.summary.samples == 30
    samples, distinct = query(
        tmp_path / "run",
        "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM completions",
    )[0]
    assert samples == distinct == 30


def test_budgets_stop_cleanly_and_a_larger_one_continues(
    tiny_model, passages, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = generate_args(passages, tiny_model, out, "--no-checks", "--dedup", "off")
    code, stdout, err = run_cli([*args, "--max-tasks", 5], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "stopped: --max-tasks 5 reached"
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
    assert summary["state"] == "stopped: --max-output-tokens 2000 reached"
    tokens = summary["summary"]["output_tokens"]
    assert 2000 <= tokens < 2000 + 48  # stops at the request that reached it


def test_retry_rejected_asks_again_at_most_k_times(tiny_model, passages, tmp_path):
    out = tmp_path / "run"
    args = generate_args(passages, tiny_model, out, "--limit", 24, "--retry-rejected", 2)
    result = subprocess.run(BONITO + args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
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
         "same command again to continue, or choose another --output."),
        ("ro", "Cannot write in {mount}: read-only file system; choose a writable --output."),
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
        ([" "], "No task type given"),
        (["ynq"], "Did you mean 'ynqa'"),
    ]:
        with pytest.raises(BonitoError, match=message):
            TaskMix.parse(values)
    with pytest.raises(BonitoError, match="--per-context must be between 1 and the 3"):
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


def test_status_of_a_finished_run(tiny_model, passages, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert (
        run_cli(generate_args(passages, tiny_model, out, "--limit", 6), capsys, monkeypatch)[0] == 0
    )
    code, stdout, _ = run_cli(["status", out], capsys, monkeypatch)
    assert code == 0
    assert "finished" in stdout and "6/6 requests (100.0%)" in stdout


def test_no_checks_alone_is_the_original_behaviour(
    tiny_model, passages, tmp_path, capsys, monkeypatch
):
    """--no-checks keeps every parseable sample: no task checks and no dedup."""
    out = tmp_path / "run"
    args = generate_args(passages, tiny_model, out, "--no-checks", "--limit", 12, "--n", 2)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["checks"] is False
    assert summary["config"]["dedup"]["mode"] == "off"
    counts = summary["summary"]
    assert counts["duplicates"] == 0
    assert set(counts["rejected"]) <= {"no_pipe", "several_pipes", "empty_input", "empty_output"}
    assert counts["accepted"] + sum(counts["rejected"].values()) == counts["samples"] == 24
