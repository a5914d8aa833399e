"""`bonito export` end to end: a run of the scripted engine exported in every format and read
back, the split by document, the dataset card, and the mistakes a user can make (test_cli exports
a run of the tiny generator)."""

import itertools
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from fake_engine import scripted_engines
from helpers import (
    BONITO,
    generate_passages_run,
    make_config,
    make_store,
    run_cli,
    store_tasks,
)
from huggingface_hub import DatasetCard

from bonito import BonitoError
from bonito.publish import export as export_module
from bonito.publish.export import CITATION, LICENCE_NOTE, split_documents
from bonito.runs.store import RunStore

FORMATS = ("jsonl", "parquet", "hf", "chat", "prompt-completion", "openai", "alpaca", "sharegpt")


@pytest.fixture(scope="module")
def run(tokenizer_model, tmp_path_factory) -> Path:
    with scripted_engines():
        return generate_passages_run(tokenizer_model, tmp_path_factory.mktemp("export"))


def read_split(folder: Path, format_name: str, split: str) -> list[dict]:
    """The records of one split as written, read with the reader each format is meant for."""
    if format_name == "hf":
        return datasets.load_from_disk(str(folder))[split].to_list()
    if format_name == "parquet":
        return pq.read_table(folder / f"{split}.parquet").to_pylist()
    lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def load_with_card(folder: Path, tmp: Path) -> datasets.DatasetDict:
    """The export loaded as the hub loads it, through the card's configs; a cache of its own,
    as `datasets` caches a local folder by its name and card, not by its files."""
    return datasets.load_dataset(str(folder), cache_dir=str(tmp / "cache"))


def expected_record(task: dict, format_name: str) -> dict:
    """What the export of `task` should be, written out here rather than taken from bonito."""
    meta = {"task_type": task["task_type"], "id": task["id"]}
    prompt, answer = task["input"], task["output"]
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if format_name == "chat":
        return {"messages": turns, **meta}
    if format_name == "openai":
        return {"messages": turns}
    if format_name == "prompt-completion":  # the prompt ends in a newline: no space is needed
        return {"prompt": f"<|input|>\n{prompt}\n<|output|>\n", "completion": answer, **meta}
    if format_name == "alpaca":
        return {"instruction": prompt, "input": "", "output": answer, **meta}
    if format_name == "sharegpt":
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
        return {"conversations": turns, **meta}
    source = task["source"] if format_name == "jsonl" else json.dumps(task["source"])
    columns = ("id", "task_type", "input", "output", "context", "document")
    return {key: task[key] for key in columns} | {"source": source}


@pytest.mark.parametrize("format_name", FORMATS)
def test_every_format_reads_back_as_the_accepted_tasks(
    run, tmp_path, format_name, capsys, monkeypatch
):
    out = tmp_path / format_name
    code, stdout, err = run_cli(
        ["export", run, "--format", format_name, "-o", out], capsys, monkeypatch
    )
    assert code == 0, err
    accepted = store_tasks(run, "accepted")
    assert len(accepted) < len(store_tasks(run)), "the run should have rejected samples too"
    records = read_split(out, format_name, "train")
    if format_name == "parquet":
        records = [r | {"source": json.dumps(json.loads(r["source"]))} for r in records]
    assert records == [expected_record(task, format_name) for task in accepted]
    assert not (out / "test.jsonl").exists() and not (out / "test").exists()
    assert f"{len(accepted)} tasks from" in stdout
    hub_view = load_with_card(out, tmp_path)
    assert list(hub_view) == ["train"] and hub_view["train"].num_rows == len(accepted)


def test_split_by_document_keeps_documents_whole_and_is_deterministic(
    run, tmp_path, capsys, monkeypatch
):
    folders = [tmp_path / "a" / "tasks", tmp_path / "b" / "tasks"]
    for folder in folders:
        args = ["export", run, "-o", folder, "--split-by-document", 0.25]
        assert run_cli(args, capsys, monkeypatch)[0] == 0
    for name in ("train.jsonl", "test.jsonl", "README.md"):
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes()
    train, test = (read_split(folders[0], "jsonl", split) for split in ("train", "test"))
    train_docs, test_docs = ({r["document"] for r in side} for side in (train, test))
    assert train_docs and test_docs and not train_docs & test_docs
    accepted = store_tasks(run, "accepted")
    assert sorted(r["id"] for r in train + test) == sorted(t["id"] for t in accepted)
    per_document = Counter(t["document"] for t in accepted)
    assert abs(len(test) - 0.25 * len(accepted)) <= max(per_document.values())
    card = (folders[0] / "README.md").read_text()
    assert f"| train | {len(train_docs)} | {len(train)} |" in card
    assert f"| test | {len(test_docs)} | {len(test)} |" in card
    assert f"Test holds {len(test) / len(accepted):.1%} of the tasks (asked for 25.0%" in card
    parquet = tmp_path / "parquet"
    args = ["export", run, "-o", parquet, "-f", "parquet", "--split-by-document", 0.25]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    assert [r["id"] for r in read_split(parquet, "parquet", "test")] == [r["id"] for r in test]
    loaded = load_with_card(parquet, tmp_path)
    assert {name: split.num_rows for name, split in loaded.items()} == {
        "train": len(train),
        "test": len(test),
    }


def test_split_documents_is_seeded_close_and_never_leaves_a_side_empty():
    sizes = {f"doc{i:03}": 1 + i % 7 for i in range(200)}
    test = split_documents(sizes, 0.1, seed=3)
    assert test == split_documents(sizes, 0.1, seed=3)
    assert test != split_documents(sizes, 0.1, seed=4)
    share = sum(sizes[d] for d in test)
    assert abs(share - 0.1 * sum(sizes.values())) <= 3.5
    two = {"a": 5, "b": 5}
    assert len(split_documents(two, 0.01, seed=0)) == 1  # test gets a document
    assert len(split_documents(two, 0.99, seed=0)) == 1  # train keeps one
    with pytest.raises(BonitoError, match="at least two documents"):
        split_documents({"only": 9}, 0.1, seed=0)


def best_test_size(sizes: dict[str, int], fraction: float) -> int:
    """By trying every split with a document on each side: the test size nearest the asked
    share, the smaller on a tie."""
    counts, target = list(sizes.values()), fraction * sum(sizes.values())
    splits = [
        sum(chosen) for k in range(1, len(counts)) for chosen in itertools.combinations(counts, k)
    ]
    return min(splits, key=lambda size: (abs(size - target), size))


@pytest.mark.parametrize("seed", range(8))
def test_split_by_document_lands_nearest_the_share_with_the_smaller_side_test(seed):
    # the newcomer's run r3: 62 tasks from 4 documents; 0.5 gave test 54 (87%), 0.2 gave 12.9%
    finding = {"doc-a": 2, "doc-b": 4, "doc-c": 50, "doc-d": 6}
    assert sum(finding[d] for d in split_documents(finding, 0.5, seed)) == 12  # 50 in train
    assert sum(finding[d] for d in split_documents(finding, 0.2, seed)) == 12  # 19.4%
    rng = random.Random(seed)
    for _ in range(20):
        sizes = {f"d{i}": rng.randint(1, 40) for i in range(rng.randint(2, 9))}
        fraction = rng.choice([0.05, 0.1, 0.25, 0.4, 0.5, 0.7])
        test = sum(sizes[d] for d in split_documents(sizes, fraction, seed))
        assert test == best_test_size(sizes, fraction), (sizes, fraction)
        if fraction <= 0.5:
            assert test <= sum(sizes.values()) - test  # test is never the larger side


def test_split_documents_is_fast_on_many_documents():
    sizes = {f"doc{i}": 2 * (1 + i * 7919 % 997) for i in range(3000)}  # even: 0.3 not hit
    started = time.perf_counter()
    test = split_documents(sizes, 0.3, seed=0)
    assert time.perf_counter() - started < 30
    assert abs(sum(sizes[d] for d in test) - 0.3 * sum(sizes.values())) <= 1


def test_card_says_what_made_the_tasks(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_in_a_card")
    out = tmp_path / "chat"
    args = ["export", run, "-o", out, "-f", "chat", "--split-by-document", 0.3]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    files = meta["configs"][0]["data_files"]
    assert files == [
        {"split": "train", "path": "train.jsonl"},
        {"split": "test", "path": "test.jsonl"},
    ]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"] and "bonito" in meta["tags"]
    text = card.text
    config = json.loads((run / "summary.json").read_text())["config"]
    assert f"generator: {config['model']}" in text
    assert "temperature=0.5, top_p=0.95, max_tokens=48, seed=5" in text
    assert "task mix: ynqa:1, nli:1, exqa:1 (3 per context)" in text
    assert "passages.jsonl (" in text and "blake2b" in text
    records = read_split(out, "chat", "train") + read_split(out, "chat", "test")
    for kind, number in Counter(r["task_type"] for r in records).items():
        assert f"| {kind} | " in text and f" | {number} |\n" in text
    rejected = Counter(t["reason"] for t in store_tasks(run, "rejected"))
    reason, number = rejected.most_common(1)[0]
    assert f"rejected, not exported: {rejected.total()} (" in text
    assert f"{reason} {number}" in text
    assert LICENCE_NOTE in text and CITATION in text
    assert "SFTTrainer" in text
    assert "hf_secret" not in (out / "README.md").read_text()


def test_private_exports_hold_no_provenance_and_no_local_name(run, tmp_path, capsys, monkeypatch):
    accepted = store_tasks(run, "accepted")
    config = json.loads((run / "summary.json").read_text())["config"]
    for format_name in ("jsonl", "parquet", "hf", "chat"):
        out = tmp_path / format_name
        args = ["export", run, "-o", out, "-f", format_name, "--private"]
        args += ["--split-by-document", 0.3]
        assert run_cli(args, capsys, monkeypatch)[0] == 0
        records = read_split(out, format_name, "train") + read_split(out, format_name, "test")
        assert sorted(r["id"] for r in records) == sorted(t["id"] for t in accepted)
        for record in records:
            assert not {"context", "document", "source"} & set(record)
        exported = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
        for name in (str(run.parent), "passages.jsonl", str(config["model"])):
            assert name.encode() not in exported, (format_name, name)
        card = (out / "README.md").read_text()
        assert "Exported with --private" in card and "a local model (name withheld)" in card
        assert "- inputs: an input (" in card and "`source` (where" not in card
    pq_columns = pq.read_table(tmp_path / "parquet" / "train.parquet").column_names
    assert pq_columns == ["id", "task_type", "input", "output"]


def test_private_applies_to_what_is_pushed_to_the_hub(run, tmp_path, capsys, monkeypatch):
    pushed = []
    monkeypatch.setattr(export_module, "push", lambda export, card: pushed.append((export, card)))
    args = ["export", run, "-o", tmp_path / "out", "--private", "--push-to-hub", "me/tasks"]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    ((export, card),) = pushed
    config = json.loads((run / "summary.json").read_text())["config"]
    assert "Exported with --private" in card and "data/train-*" in card
    assert "passages.jsonl" not in card and str(config["model"]) not in card
    columns = export_module.load_export(export, str(tmp_path / "cache"))["train"].column_names
    assert columns == ["id", "task_type", "input", "output"]


def test_decontaminate_leaves_out_tasks_that_overlap_the_evaluation_data(
    run, tmp_path, capsys, monkeypatch, caplog
):
    accepted = store_tasks(run, "accepted")
    passage = accepted[0]["context"]  # the same text is in several notes: "Note i. <text>"
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"context": passage.split(". ", 1)[1], "label": 1}) + "\n")
    out = tmp_path / "clean"
    args = ["export", run, "-o", out, "--decontaminate", evaluation]
    code, stdout, err = run_cli([*args, "--split-by-document", 0.2], capsys, monkeypatch)
    assert code == 0, err

    def runs(text: str) -> set[str]:  # the test's own reading: 13-word windows as strings
        words = re.findall(r"\w+", text.lower())
        return {" ".join(words[i : i + 13]) for i in range(len(words) - 12)}

    shared = runs(passage.split(". ", 1)[1])
    overlapping = [
        t for t in accepted if any(runs(t[key]) & shared for key in ("context", "input", "output"))
    ]
    assert len({t["document"] for t in overlapping}) > 1
    records = read_split(out, "jsonl", "train") + read_split(out, "jsonl", "test")
    assert sorted(r["id"] for r in records) == sorted(
        t["id"] for t in accepted if t not in overlapping
    )
    card = (out / "README.md").read_text()
    assert "## Decontamination" in card
    assert (
        f"and {len(overlapping)} of the {len(accepted)} tasks share a run of 13 words with " in card
    )
    assert f"{len(overlapping)} tasks overlapping the evaluation data" in stdout
    assert f"{len(overlapping)} of the {len(accepted)} tasks" in caplog.text  # the warning

    everything = tmp_path / "all.txt"
    everything.write_text("\n\n".join(t["context"] for t in accepted))
    args = ["export", run, "-o", tmp_path / "none", "--decontaminate", everything]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "has no accepted tasks to export: " in err


def test_overwrite_replaces_an_earlier_export_only(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["export", run, "-o", out, "--split-by-document", 0.3]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(["export", run, "-o", out, "--overwrite"], capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt", "train.jsonl"]
    assert len(read_split(out, "jsonl", "train")) == len(store_tasks(run, "accepted"))


KILLED_AT_THIRD_ROW = """
import os, signal, sys
from bonito.publish import export
from bonito.cli import main

rows, write = [], export.JsonLines.write
def killed_at_third(self, record):
    rows.append(record)
    if len(rows) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, record)
export.JsonLines.write = killed_at_third
sys.argv = ["bonito", *sys.argv[1:]]
main()
"""


@pytest.mark.heavy  # starts processes
def test_an_interrupted_export_leaves_the_earlier_one_whole(run, tmp_path, capsys, monkeypatch):
    """F17: a failure or a kill while exporting leaves the earlier export (or none), never a
    part of one; the folder a killed export left beside it goes with the next export."""
    out = tmp_path / "out"
    assert run_cli(["export", run, "-o", out], capsys, monkeypatch)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(self, record):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(export_module.JsonLines, "write", full)
        code, _, err = run_cli(["export", run, "-o", out, "--overwrite"], capsys, monkeypatch)
    assert code == 1 and "the disk is full" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    fresh = tmp_path / "fresh"
    args = ["export", run, "-o", fresh]
    for overwrite in ([], ["--overwrite"]):
        command = [sys.executable, "-c", KILLED_AT_THIRD_ROW, *map(str, args + overwrite)]
        assert subprocess.run(command).returncode == -9
    assert not fresh.exists()
    killed = [sys.executable, "-c", KILLED_AT_THIRD_ROW, "export", str(run), "-o", str(out)]
    assert subprocess.run([*killed, "--overwrite"]).returncode == -9
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    assert run_cli(["export", run, "-o", out, "--overwrite"], capsys, monkeypatch)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert (fresh / "train.jsonl").read_bytes() == before["train.jsonl"]


def test_a_run_without_accepted_tasks_is_refused(tmp_path, capsys, monkeypatch):
    store = RunStore(tmp_path / "run.sqlite")
    store.put("config", make_config())
    store.close()
    code, _, err = run_cli(["export", tmp_path, "-o", tmp_path / "out"], capsys, monkeypatch)
    assert code == 1 and "has no accepted tasks to export yet" in err


def mistakes(run: Path, tmp: Path) -> list[tuple[list, str]]:
    (tmp / "full").mkdir()
    (tmp / "full" / "data.txt").write_text("x")
    (tmp / "file").write_text("x")
    out = tmp / "out"
    return [
        (["export", tmp, "-o", out], "is not a bonito run (it has no run.sqlite)"),
        (
            ["export", run, "-o", out, "-f", "csv"],
            "format_name (--format) must be one of jsonl, parquet, hf",
        ),
        (["export", run, "-o", out, "--split-by-document", 0], "between 0 and 1"),
        (["export", run, "-o", out, "--split-by-document", 1], "between 0 and 1"),
        (["export", run, "-o", out, "--split-by-document", 1.5], "between 0 and 1"),
        (
            ["export", run, "-o", tmp / "full"],
            "is not empty; choose another folder or pass overwrite=True (--overwrite)",
        ),
        (["export", run, "-o", tmp / "file"], "is a file"),
        (["export", run, "-o", run, "--overwrite"], "output (--output) is the run folder"),
        (
            ["export", run, "-o", out, "--push-to-hub", "no such//repo"],
            "push_to_hub (--push-to-hub) 'no such//repo' is not a hub repo id",
        ),
        (
            ["export", run, "-o", tmp / "file" / "out"],
            f"Cannot write in {tmp / 'file'}: it is a file, not a folder; choose a writable",
        ),
        (["export", run, "-o", out, "--decontaminate", tmp / "none.jsonl"], "Cannot read the"),
        (["export", run, "-o", out, "--decontaminate", tmp / "file"], "holds no run of 13 words"),
    ]


def test_mistakes_are_one_clear_message(run, tmp_path, capsys, monkeypatch):
    for args, message in mistakes(run, tmp_path):
        code, stdout, err = run_cli(args, capsys, monkeypatch)
        assert code == 1, args
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert stdout == ""
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "full" / "data.txt").read_text() == "x"


class Unauthorized(BaseHTTPRequestHandler):
    """A hub that turns every request away."""

    def reply(self) -> None:
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = reply

    def log_message(self, *args) -> None:
        pass


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.heavy  # starts processes
@pytest.mark.parametrize("hub", ["refusing", "unauthorized"])
def test_push_failure_is_one_sentence_and_keeps_the_export(run, tmp_path, hub):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1] if hub == "unauthorized" else closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_secret_for_the_test"}
    out = tmp_path / "out"
    try:
        result = subprocess.run(
            [*BONITO, "export", str(run), "-o", str(out), "-f", "chat", "--push-to-hub", "me/t"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        server.shutdown()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: Could not push to the hub dataset me/t (")
    assert f"the export in {out} is complete" in errors[0]
    assert "Traceback" not in result.stderr and "hf_secret" not in result.stderr
    assert len(read_split(out, "chat", "train")) == len(store_tasks(run, "accepted"))
    assert "hf_secret" not in (out / "README.md").read_text()


@pytest.mark.heavy
def test_a_run_of_100k_tasks_is_exported_in_batches(tmp_path, capsys, monkeypatch):
    run, out = tmp_path / "big", tmp_path / "out"
    make_store(run, contexts=1000, per_request=50)
    args = ["export", run, "-o", out, "-f", "parquet", "--split-by-document", 0.1]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    files = [pq.ParquetFile(out / f"{split}.parquet") for split in ("train", "test")]
    accepted = len(store_tasks(run, "accepted"))
    assert sum(f.metadata.num_rows for f in files) == accepted > 30_000
    assert 0.09 < files[1].metadata.num_rows / accepted < 0.11
    assert all(
        f.metadata.row_group(i).num_rows <= 1000 for f in files for i in range(f.num_row_groups)
    )
    documents = [set(f.read(columns=["document"]).column(0).to_pylist()) for f in files]
    assert not documents[0] & documents[1]
