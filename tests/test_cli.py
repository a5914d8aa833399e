"""`bonito generate` and `bonito chunk` end to end on real files: one run of the tiny generator,
generated, exported and reported; the rest with the scripted engine and the tiny generator's
tokenizer (fake_engine), which load no model."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from helpers import ARTICLE, run_cli, write_docx, write_html, write_pdf

PASSAGES = [
    "The museum reopened after a year of repairs to its roof and galleries.",
    "Cyclists should carry lights after dark and keep to the right of the road.",
    "The company reported higher sales in the third quarter, driven by exports.",
]


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
    assert counts["documents"] == 4 and counts["contexts"] == 4
    assert counts["skipped"] == {"empty": 1}
    assert (out / "skipped.jsonl").read_text() == json.dumps(
        {"source": str(inputs / "p.jsonl"), "reason": "empty", "detail": "line 4 has no text"}
    ) + "\n"
    assert counts["samples"] == 4 * 2 * 2
    assert (
        counts["accepted"] + counts["duplicates"] + sum(counts["rejected"].values())
        == counts["samples"]
    )
    assert summary["config"]["task_mix"] == {"ynqa": 1.0, "exqa": 1.0}
    assert summary["state"] == "finished"
    tasks = read_tasks(out)
    assert len(tasks) == counts["accepted"] >= 1
    first = tasks[0]
    assert set(first) == {
        "id",
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
    notes = PASSAGES[0] + "\n\n" + PASSAGES[1]  # a text file is one document
    assert all(
        t["context"] == (PASSAGES[t["source"]["row"] - 1] if "row" in t["source"] else notes)
        for t in tasks
    )
    assert {t["source"]["span"][0] for t in tasks} == {0}
    assert "accepted" in stdout and "output tokens/s" in stdout and "documents" in stdout
    assert f"skipped {inputs / 'p.jsonl'} line 4 has no text (empty)" in stderr
    # the run of a real generator looked at, exported and reported (elsewhere: scripted)
    code, stdout, stderr = run_cli(["status", out], capsys, monkeypatch)
    assert code == 0 and "finished" in stdout, stderr
    code, _, stderr = run_cli(["export", out, "-o", inputs / "export"], capsys, monkeypatch)
    assert code == 0, stderr
    train = (inputs / "export" / "train.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in train) == sorted(t["id"] for t in tasks)
    code, stdout, stderr = run_cli(["report", out, "-o", inputs / "r.html"], capsys, monkeypatch)
    assert code == 0, stderr
    assert f"report of {counts['samples']} samples" in stdout


def test_context_col_limit_and_saved_dataset(
    tokenizer_model, scripted, inputs, capsys, monkeypatch
):
    code, _, err = run_cli(
        [
            "generate",
            inputs / "p.csv",
            "-t",
            "nli",
            "--model",
            tokenizer_model,
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
            tokenizer_model,
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
        (["--temperature", "nan"], "temperature must be a finite number, got nan."),
        (["--temperature", "inf"], "temperature must be a finite number, got inf."),
        (["--text-field", "body"], "4 skipped (missing_field 4), e.g. "),
        (["--context-col", "body"], "line 1 has no field 'body' (it has: text)"),
        (["--max-context-tokens", "2040"], "use max_tokens 20"),
        (["--max-input-tokens", "10"], "raise max_input_tokens to 46 or more."),
        (
            ["--max-context-tokens", "8000", "--max-input-tokens", "10000", "--max-tokens", "8"],
            "Prompts of up to 8014 tokens (contexts of up to 8000 and the prompt around them) "
            "and completions of up to 8 do not fit the model's window of 4096 tokens; use "
            "Chunking.max_tokens (--max-context-tokens) 4074 or less.",
        ),
        (
            ["--max-tokens", "100000"],
            "window of 4096 tokens; use SamplingParams.max_tokens (--max-tokens) 3570 or less.",
        ),
        (
            ["--overlap", "300"],
            "overlap (--overlap) must be between 0 and half of max_tokens (256)",
        ),
        (["--model", "./missing-model"], "The model path './missing-model' does not exist"),
        (["--engine", "tgi"], "Unknown engine 'tgi'"),
    ],
)
def test_bad_input_is_one_clear_message(
    tokenizer_model, scripted, inputs, capsys, monkeypatch, extra, message
):
    args = [
        "generate",
        inputs / "p.jsonl",
        "-t",
        "ynqa",
        "--model",
        tokenizer_model,
        "--output",
        inputs / "bad",
        *extra,
    ]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


def test_the_same_command_resumes_and_another_is_refused(
    tokenizer_model, scripted, inputs, capsys, monkeypatch
):
    args = [
        "generate",
        inputs / "p.csv",
        "--context-col",
        "body",
        "-t",
        "nli",
        "--model",
        tokenizer_model,
        "--output",
        inputs / "again",
        "--max-tokens",
        16,
    ]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    first = (inputs / "again" / "tasks.jsonl").read_text()
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "finished" in stdout and "loading" not in err  # nothing left to do
    assert len(scripted) == 1  # the first run's engine only
    assert (inputs / "again" / "tasks.jsonl").read_text() == first
    code, _, err = run_cli([*args, "--temperature", "0.7"], capsys, monkeypatch)
    assert code == 1 and "holds a run with another configuration" in err
    assert "sampling.temperature: 0.5 -> 0.7" in err and "Traceback" not in err
    assert run_cli([*args, "--temperature", "0.7", "--overwrite"], capsys, monkeypatch)[0] == 0
    summary = json.loads((inputs / "again" / "summary.json").read_text())
    assert summary["config"]["sampling"]["temperature"] == 0.7


@pytest.mark.heavy
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


def test_chunk_shows_what_a_folder_of_documents_sends(
    tokenizer_model, tmp_path, capsys, monkeypatch
):

    folder = tmp_path / "docs"
    (folder / "web").mkdir(parents=True)
    write_pdf(folder / "minutes.pdf")
    write_docx(folder / "report.docx")
    write_html(folder / "web" / "news.html")
    (folder / "long.md").write_text("\n\n".join(ARTICLE * 6))
    (folder / "rows.jsonl").write_text('{"text": "A row."}\n{"text": \n')
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
    (folder / "empty.txt").write_text("")
    out = tmp_path / "out" / "contexts.jsonl"
    args = ["chunk", folder, "--model", tokenizer_model, "-o", out, "--max-tokens", 64]
    code, stdout, stderr = run_cli([*args, "--min-tokens", 8], capsys, monkeypatch)
    assert code == 0, stderr
    contexts = [json.loads(line) for line in out.read_text().splitlines()]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_model)
    for context in contexts:
        assert len(tokenizer(context["text"], add_special_tokens=False).input_ids) <= 64
    assert {Path(c["file"]).name for c in contexts} == {
        "minutes.pdf",
        "report.docx",
        "news.html",
        "long.md",
        "rows.jsonl",
    }
    assert {p for c in contexts if c["file"].endswith(".pdf") for p in c["pages"]} == {1, 2}
    assert sum(c["file"].endswith("long.md") for c in contexts) > 3
    skipped = [json.loads(line) for line in (out.parent / "skipped.jsonl").read_text().splitlines()]
    assert [(Path(s["source"]).name, s["reason"]) for s in skipped] == [
        ("broken.pdf", "corrupt"),
        ("empty.txt", "empty"),
        ("rows.jsonl", "invalid_json"),
    ]
    assert "documents" in stdout and str(len(contexts)) in stdout
    assert "corrupt 1, empty 1, invalid_json 1" in stdout
    assert "rows.jsonl line 2 is not valid JSON" in stderr
    code, _, stderr = run_cli([*args, "--strict"], capsys, monkeypatch)
    assert code == 1 and "strict (--strict): 3 skipped (" in stderr and "Traceback" not in stderr


def test_generate_goes_from_a_folder_of_documents_to_tasks(
    tokenizer_model, scripted, tmp_path, capsys, monkeypatch
):

    (tmp_path / "pdfs").mkdir()
    write_pdf(tmp_path / "pdfs" / "minutes.pdf")
    out = tmp_path / "run"
    code, _, stderr = run_cli(
        [
            "generate",
            tmp_path / "pdfs",
            "-t",
            "ynqa",
            "--model",
            tokenizer_model,
            "--output",
            out,
            "--max-context-tokens",
            24,
            "--min-context-tokens",
            4,
            "--max-tokens",
            32,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["documents"] == 1 and summary["contexts"] >= 2
    assert (out / "skipped.jsonl").read_text() == ""
    for task in read_tasks(out):
        assert task["source"]["file"] == str(tmp_path / "pdfs" / "minutes.pdf")
        assert task["source"]["pages"] in ([1], [2]) and task["source"]["title"] == "Depot minutes"


def test_nothing_readable_is_one_clear_message(tokenizer_model, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.txt").write_text(" ")
    (tmp_path / "junk.txt").write_bytes(bytes(range(256)))
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(
        ["chunk", tmp_path, "--model", tokenizer_model, "-o", out], capsys, monkeypatch
    )
    assert code == 1 and "Traceback" not in err
    assert f"No contexts from {tmp_path}: 2 skipped (empty 1, binary 1), e.g. " in err
    assert f"see {tmp_path / 'skipped.jsonl'}." in err


def test_generate_refuses_a_folder_that_holds_something_else(
    tokenizer_model, scripted, inputs, capsys, monkeypatch
):
    """A folder of documents given as --output is refused, --overwrite or not; an empty one, or
    one holding only what a run writes beside its store, becomes the run."""
    before = sorted(inputs.iterdir())
    args = ["generate", inputs / "p.jsonl", "-t", "ynqa", "--model", tokenizer_model, "--limit", 1]
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli([*args, "--output", inputs, *extra], capsys, monkeypatch)
        assert code == 1 and "Traceback" not in err
        assert (
            f"folder (--output) {inputs} is not empty and holds no bonito run (it has notes.txt)"
            in err
        )
        assert sorted(inputs.iterdir()) == before
    (inputs / "empty").mkdir()
    (inputs / "left").mkdir()
    (inputs / "left" / "run.lock").write_text("")
    for out in (inputs / "empty", inputs / "left"):
        code, _, err = run_cli([*args, "--max-tokens", 16, "--output", out], capsys, monkeypatch)
        assert code == 0, err


# --- output paths and devices: one sentence each, before any work ---------------------------


@pytest.fixture
def blocked(tmp_path):
    """A file where a folder is wanted, and (where chattr works) an immutable folder, which even
    root cannot write in."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    immutable = tmp_path / "immutable"
    immutable.mkdir()
    made = subprocess.run(["chattr", "+i", str(immutable)], capture_output=True).returncode == 0
    yield afile, immutable if made else None
    if made:
        subprocess.run(["chattr", "-i", str(immutable)], check=True)


@pytest.fixture
def small_inputs(tmp_path):
    """A passage file, an export-like tasks file and a labelled yes-no file."""
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": PASSAGES[0]}) + "\n")
    task = {"input": f"{PASSAGES[0]}\nIs the museum open?", "output": "Yes"}
    (tmp_path / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    labelled = {"context": PASSAGES[0], "question": "Open?", "choices": ["Yes", "No"], "label": 0}
    (tmp_path / "labelled.jsonl").write_text(json.dumps(labelled) + "\n")
    return tmp_path


OUTPUT_COMMANDS = {
    "chunk": lambda m, i, o: ["chunk", i / "p.jsonl", "--model", m, "-o", o / "ctx.jsonl"],
    "generate": lambda m, i, o: [
        "generate",
        i / "p.jsonl",
        "-t",
        "ynqa",
        "--model",
        m,
        "-o",
        o / "r",
    ],
    "tiny-model": lambda m, i, o: ["tiny-model", o / "tiny"],
    "finetune": lambda m, i, o: ["finetune", i / "tasks.jsonl", "--base-model", m, "-o", o / "f"],
    "evaluate": lambda m, i, o: [
        "evaluate",
        "--model",
        m,
        "--data",
        i / "labelled.jsonl",
        "-t",
        "ynqa",
        "-o",
        o / "s.json",
    ],  # fmt: skip
}


def output_name(command: str) -> str:
    """How `command`'s errors name its output: the library's parameter, then the flag."""
    return {"generate": "folder (--output)", "tiny-model": ""}.get(command, "output (--output)")


def test_tiny_model_refuses_a_seed_numpy_cannot_take_before_writing(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["tiny-model", tmp_path / "tiny", "--seed", "-1"], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert "seed (--seed) must be between 0 and 4294967295" in err
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_an_output_under_a_file_or_in_an_unwritable_folder_is_one_sentence(
    tokenizer_model, small_inputs, blocked, command, capsys, monkeypatch
):
    import bonito.evaluation

    monkeypatch.setattr(bonito.evaluation, "evaluate_model", None)  # checked before evaluating
    afile, immutable = blocked
    option = output_name(command) or "path"
    args = OUTPUT_COMMANDS[command](tokenizer_model, small_inputs, afile)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert (
        f"Cannot write in {afile}: it is a file, not a folder; choose a writable {option}." in err
    )
    if immutable is None:
        pytest.skip("chattr +i does not work here: the unwritable folder is not tried")
    args = OUTPUT_COMMANDS[command](tokenizer_model, small_inputs, immutable)
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert f"Cannot write in {immutable}: permission denied; choose a writable {option}." in err
    assert "disk space" not in err


@pytest.mark.parametrize("command", ["generate", "finetune", "tiny-model"])
def test_a_file_given_for_an_output_folder_is_one_sentence(
    tokenizer_model, small_inputs, blocked, command, capsys, monkeypatch
):
    afile = blocked[0]
    args = {
        "generate": [
            "generate",
            small_inputs / "p.jsonl",
            "-t",
            "ynqa",
            "--model",
            tokenizer_model,
        ],
        "finetune": ["finetune", small_inputs / "tasks.jsonl", "--base-model", tokenizer_model],
        "tiny-model": ["tiny-model"],
    }[command]
    named = f"{output_name(command)} {afile}".lstrip()
    code, _, err = run_cli(
        [*args, *(["-o"] if command != "tiny-model" else []), afile], capsys, monkeypatch
    )
    assert code == 1 and "Traceback" not in err
    assert f"error: {named} is a file; give a folder.\n" == err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["generate", "{p}", "-t", "ynqa", "--device", "tpu"],
            "device (--device) tpu is not a device",
        ),
        (
            ["generate", "{p}", "-t", "ynqa", "--device", "cuda"],
            "device (--device) cuda: this PyTorch",
        ),
        (
            ["evaluate", "--data", "{labelled}", "-t", "ynqa", "--device", "cuda"],
            "device (--device) cuda: this PyTorch has no CUDA (a CPU build); use cpu.",
        ),
        (
            ["evaluate", "--data", "{labelled}", "-t", "ynqa", "--device", "cuda:x"],
            "device (--device) cuda:x is not a device; use cpu, cuda, cuda:N or mps.",
        ),
        (
            [
                "generate",
                "{p}",
                "-t",
                "ynqa",
                "--engine",
                "transformers",
                "--engine-arg",
                "dtype=float64x",
            ],
            "Unknown dtype 'float64x'; use one of auto, bfloat16, float16, float32.",
        ),  # fmt: skip
    ],
)
def test_a_bad_device_or_dtype_is_one_sentence(
    tiny_model, small_inputs, args, message, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)  # a CPU build anywhere
    paths = {"p": small_inputs / "p.jsonl", "labelled": small_inputs / "labelled.jsonl"}
    args = [a.format(**paths) for a in args]
    option = "--base-model" if args[0] == "finetune" else "--model"
    args += [option, tiny_model] + (["-o", small_inputs / "run"] if args[0] == "generate" else [])
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert message in err
