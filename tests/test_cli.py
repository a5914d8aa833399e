"""`bonito generate` end to end on real files with the tiny generator."""

import json
import subprocess
import sys

import datasets
import pytest

from bonito.cli import main

PASSAGES = [
    "The museum reopened after a year of repairs to its roof and galleries.",
    "Cyclists should carry lights after dark and keep to the right of the road.",
    "The company reported higher sales in the third quarter, driven by exports.",
]


def run_cli(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bonito", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        "\n".join(json.dumps({"text": p}) for p in PASSAGES) + '\n{"text": "   "}\n'
    )
    (tmp_path / "p.csv").write_text("body\n" + "".join(f'"{p}"\n' for p in PASSAGES[:2]))
    (tmp_path / "notes.txt").write_text(PASSAGES[0] + "\n\n" + PASSAGES[1] + "\n")
    return tmp_path


def read_tasks(folder):
    return [json.loads(line) for line in (folder / "tasks.jsonl").read_text().splitlines()]


def test_generate_writes_tasks_and_summary(tiny_model, inputs, capsys, monkeypatch):
    out = inputs / "run"
    code, stdout, stderr = run_cli(
        [
            "generate",
            inputs / "p.jsonl",
            inputs / "notes.txt",
            "-t",
            "ynqa",
            "-t",
            "extractive question answering",
            "--model",
            tiny_model,
            "--engine",
            "transformers",
            "--output",
            out,
            "--n",
            2,
            "--max-tokens",
            96,
            "--seed",
            3,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["summary"]
    assert counts["contexts"] == 5 and counts["skipped"] == {"empty": 1}
    assert counts["samples"] == 5 * 2 * 2
    assert counts["accepted"] + sum(counts["rejected"].values()) == counts["samples"]
    assert summary["config"]["task_types"] == ["ynqa", "exqa"]
    tasks = read_tasks(out)
    assert len(tasks) == counts["accepted"] >= 10
    first = tasks[0]
    assert set(first) == {
        "input",
        "output",
        "task_type",
        "context",
        "source",
        "sample_index",
        "model",
        "sampling",
    }
    assert first["sampling"]["n"] == 2 and first["model"] == str(tiny_model)
    assert {t["task_type"] for t in tasks} <= {"ynqa", "exqa"}
    assert {t["source"]["file"] for t in tasks} == {
        str(inputs / "p.jsonl"),
        str(inputs / "notes.txt"),
    }
    assert all(
        PASSAGES[t["source"].get("row", t["source"].get("paragraph")) - 1] == t["context"]
        for t in tasks
    )
    assert "accepted" in stdout and "output tokens/s" in stdout
    assert "skipped" in stderr and "p.jsonl:4" in stderr


def test_context_col_limit_and_saved_dataset(tiny_model, inputs, capsys, monkeypatch):
    code, _, err = run_cli(
        [
            "generate",
            inputs / "p.csv",
            "-t",
            "nli",
            "--model",
            tiny_model,
            "--output",
            inputs / "csv",
            "--context-col",
            "body",
            "--limit",
            1,
            "--max-tokens",
            32,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert json.loads((inputs / "csv" / "summary.json").read_text())["summary"]["contexts"] == 1
    datasets.Dataset.from_dict({"passage": PASSAGES}).save_to_disk(str(inputs / "saved"))
    code, _, err = run_cli(
        [
            "generate",
            inputs / "saved",
            "-t",
            "qa",
            "--model",
            tiny_model,
            "--output",
            inputs / "ds",
            "--context-col",
            "passage",
            "--max-tokens",
            32,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert json.loads((inputs / "ds" / "summary.json").read_text())["summary"]["contexts"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-t", "ynq"], "Unknown task type 'ynq'. Did you mean 'ynqa'?"),
        (["--max-tokens", "0"], "max_tokens must be a whole number of at least 1, got 0."),
        (["--n", "0"], "n must be a whole number of at least 1, got 0."),
        (["--temperature", "-0.5"], "temperature must be 0 (greedy) or more, got -0.5."),
        (["--context-col", "body"], "row 1 has no field 'body' (it has: text)"),
        (["--model", "./missing-model"], "The model path './missing-model' does not exist"),
        (["--engine", "tgi"], "Unknown engine 'tgi'"),
    ],
)
def test_bad_input_is_one_clear_message(tiny_model, inputs, capsys, monkeypatch, extra, message):
    args = [
        "generate",
        inputs / "p.jsonl",
        "-t",
        "ynqa",
        "--model",
        tiny_model,
        "--output",
        inputs / "bad",
        *extra,
    ]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


def test_existing_run_is_not_overwritten(tiny_model, inputs, capsys, monkeypatch):
    args = [
        "generate",
        inputs / "p.csv",
        "--context-col",
        "body",
        "-t",
        "nli",
        "--model",
        tiny_model,
        "--output",
        inputs / "again",
        "--max-tokens",
        16,
    ]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "already exists; choose another --output or pass --overwrite" in err
    assert run_cli([*args, "--overwrite"], capsys, monkeypatch)[0] == 0


def test_console_script_reports_errors_without_traceback(inputs):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from bonito.cli import main; main()",
            "generate",
            str(inputs / "p.jsonl"),
            "-t",
            "nli",
            "--model",
            str(inputs),
            "--output",
            str(inputs / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "is not a model: it has no config.json" in result.stderr
    assert "Traceback" not in result.stderr
