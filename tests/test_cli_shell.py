"""The `bonito` command's shell, through the installed console script: usage mistakes, the help
of every command, text never read as markup, Ctrl-C, progress on a terminal and quiet elsewhere,
the summary and `status --json`."""

import functools
import importlib.util
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from helpers import example_texts

from bonito.cli import app

pytestmark = pytest.mark.heavy  # every test runs the console script in a process

BONITO = Path(sys.executable).parent / "bonito"


def bonito(*args, **options) -> subprocess.CompletedProcess:
    """The console script with this environment (the tests' PYTHONPATH and offline hub)."""
    return subprocess.run(
        [BONITO, *map(str, args)], capture_output=True, text=True, timeout=300, **options
    )


def start(*args, **options) -> subprocess.Popen:
    """The console script in a process that takes Ctrl-C as a terminal's would, even when this
    one ignores it (a background job of a shell does)."""
    restore = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen([BONITO, *map(str, args)], text=True, preexec_fn=restore, **options)


def write_passages(path: Path, count: int) -> Path:
    texts = example_texts()
    lines = [json.dumps({"text": f"Note {i}. {texts[i % len(texts)]}"}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the command ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        (["generate", "x", "-o", "r"], "bonito generate", "Missing option '--task-type'"),
        (
            ["generate", "x", "-t", "ynqa", "-o", "r", "--max_tokens", "5"],
            "bonito generate",
            "No such option: --max_tokens",
        ),
        (
            ["generate", "x", "-t", "ynqa", "-o", "r", "--limit", "abc"],
            "bonito generate",
            "Invalid value for '--limit'",
        ),
        (["genrate", "x"], "bonito", "No such command 'genrate'. Did you mean 'generate'?"),
        (["ctga", "biuld"], "bonito ctga", "No such command 'biuld'. Did you mean 'build'?"),
    ],
)
def test_a_usage_mistake_is_a_usage_error(args, usage, error):
    result = bonito(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"Usage: {usage} [OPTIONS]")
    assert f"Try '{usage} -h' for help.\n\nError: {error}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bare_bonito_help_and_version():
    bare = bonito()
    assert bare.returncode == 2  # click's no_args_is_help: the help, as a usage error
    assert bare.stderr.startswith("Usage: bonito [OPTIONS] COMMAND") and "generate" in bare.stderr
    helped = bonito("-h")
    assert helped.returncode == 0 and helped.stdout == bare.stderr
    shown = bonito("--version")
    assert shown.returncode == 0 and shown.stdout == f"bonito {version('bonito')}\n"


def command_paths(group=None, path=()) -> list[tuple[str, ...]]:
    """Every command and group of the app, as the words that name it."""
    group = group or typer.main.get_command(app)
    paths = [path]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += command_paths(command, (*path, name))
        else:
            paths.append((*path, name))
    return paths


def find_command(path: tuple[str, ...]):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(path) or "bonito")
def test_help_of_every_command_reads_at_80_columns(path):
    result = bonito(*path, "-h", env=os.environ | {"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"Usage: {' '.join(('bonito', *path))} [OPTIONS]")
    assert max(map(len, text.splitlines())) <= 80
    command = find_command(path)
    context = command.make_context(path[-1] if path else "bonito", [], resilient_parsing=True)
    for param in (p for p in command.params if p.param_type_name == "option"):
        for name in param.opts + param.secondary_opts:  # whole, never cut short
            assert re.search(rf"(^|[\s,/]){re.escape(name)}([\s,/]|$)", text, re.M), name
        if param.is_flag and not param.secondary_opts:  # --version: off unless given
            continue
        if param.default is not None or isinstance(param.show_default, str):
            assert "[default: " in param.get_help_record(context)[1], param.name
    assert not re.search(r"\s\.(\s|$)", text), "a help text ends in ' .'"
    if path == ("adapt",):
        assert "--epochs" not in text  # adapt has none
    if path == ("chunk",):
        assert "Send" not in text  # chunk sends nothing


def test_messages_are_text_not_markup(tiny_model, tmp_path):
    folder = tmp_path / "notes["
    folder.mkdir()
    (folder / "draft].txt").write_text("The museum reopened after a year of repairs to its roof.")
    out = tmp_path / "out[/x]" / "contexts[final].jsonl"
    chunked = bonito(
        "chunk",
        folder / "draft].txt",
        "--model",
        tiny_model,
        "-o",
        out,
        "--min-tokens",
        "1",
        env=os.environ | {"COLUMNS": "1000"},  # the table's cells unwrapped
    )
    assert chunked.returncode == 0, chunked.stderr
    assert out.is_file() and f"contexts file  │ {out} " in chunked.stdout
    missing = bonito("chunk", tmp_path / "report[final].txt", "--model", tiny_model, "-o", out)
    assert missing.returncode == 1
    assert f"error: The input '{tmp_path}/report[final].txt' does not exist" in missing.stderr
    model = tmp_path / "no[/such]-model"
    nameless = bonito("chunk", folder / "draft].txt", "--model", model, "-o", out)
    assert nameless.returncode == 1 and "Traceback" not in nameless.stderr
    assert f"The model path '{model}' does not exist" in nameless.stderr


def test_install_hints_keep_their_extras(tiny_model, tmp_path):
    if importlib.util.find_spec("vllm"):
        pytest.skip("vLLM is installed here")
    passages = write_passages(tmp_path / "p.jsonl", 2)
    args = ["generate", passages, "-t", "ynqa", "--model", tiny_model, "-o", tmp_path / "run"]
    result = bonito(*args, "--engine", "vllm")
    assert result.returncode == 1
    assert "pip install 'bonito[vllm]'" in result.stderr


def requests_done(run: Path) -> int:
    status = bonito("status", run, "--json")
    return json.loads(status.stdout)["requests_done"] if status.returncode == 0 else 0


def test_ctrl_c_in_generate_exits_130_and_the_run_continues(tiny_model, tmp_path):
    passages, out = write_passages(tmp_path / "p.jsonl", 200), tmp_path / "run"
    args = ["generate", passages, "-t", "ynqa", "--model", tiny_model, "--engine", "transformers"]
    args += ["--output", out, "--batch-size", "4", "--max-tokens", "48"]
    process = start(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: requests_done(out), process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.endswith("interrupted; run the same command to continue\n")
    assert "Traceback" not in stderr and stdout == ""
    status = json.loads(bonito("status", out, "--json").stdout)
    assert status["state"].startswith("interrupted")
    assert 0 < status["requests_done"] < status["requests"]


def test_ctrl_c_in_chunk_leaves_no_partial_contexts_file(tiny_model, tmp_path):
    passages, out = write_passages(tmp_path / "p.jsonl", 20000), tmp_path / "contexts.jsonl"
    out.write_text("an earlier result\n")
    partial = tmp_path / ".contexts.jsonl.partial"
    process = start("chunk", passages, "--model", tiny_model, "-o", out, stderr=subprocess.PIPE)
    wait_for(lambda: partial.exists() and partial.stat().st_size > 0, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; run the same command to continue" in stderr
    assert out.read_text() == "an earlier result\n" and not partial.exists()


def run_on_a_terminal(*args) -> tuple[int, str]:
    """The command with stderr on a pseudo-terminal (of no size, as `script` makes): its exit
    status and what it showed there."""
    main, side = os.openpty()
    process = start(*args, stdout=subprocess.DEVNULL, stderr=side)
    os.close(side)
    shown = b""
    while True:
        ready, _, _ = select.select([main], [], [], 1.0)
        try:
            chunk = os.read(main, 65536) if ready else b""
        except OSError:  # the command closed the terminal
            break
        if ready and not chunk:
            break
        shown += chunk
        if not ready and process.poll() is not None:
            break
    os.close(main)
    return process.wait(timeout=60), shown.decode("utf-8", "replace")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("total", "shown"), [(12, "3/12 ["), (None, "3 prompts [")])
def test_a_slow_rate_still_reads_as_so_many_a_second(monkeypatch, total, shown):
    """tqdm would show a rate below one a second as "2.00s/ prompts"."""
    from bonito.runs.run import bar

    monkeypatch.setattr(sys, "stderr", Terminal())
    progress = bar(total=total)
    line = progress.format_meter(**{**progress.format_dict, "n": 3, "elapsed": 6.0})
    progress.close()
    assert shown in line and line.endswith(" 0.50 prompts/s]"), line


def test_generate_shows_progress_on_a_terminal_and_is_quiet_elsewhere(tiny_model, tmp_path):
    passages = write_passages(tmp_path / "p.jsonl", 6)
    args = ["generate", passages, "-t", "ynqa", "-t", "exqa", "--model", tiny_model]
    args += ["--engine", "auto", "--max-tokens", "16"]
    code, shown = run_on_a_terminal(*args, "--output", tmp_path / "tty")
    assert code == 0, shown
    assert re.search(r"reading: 6 contexts \[.* contexts/s\]", shown), shown
    assert re.search(r"generating: 100%\|.*\| 12/12 \[.* prompts/s\]", shown), shown

    out = tmp_path / "run"
    quiet = bonito(*args, "--output", out)
    assert quiet.returncode == 0 and quiet.stderr == ""  # no bars, warnings or engine notes
    summary = json.loads((out / "summary.json").read_text())["summary"]
    by_type = summary["accepted_by_type"]
    assert sum(by_type.values()) == summary["accepted"] and set(by_type) <= {"ynqa", "exqa"}
    assert summary["acceptance_rate"] == round(summary["accepted"] / summary["samples"], 4)
    share = f"{summary['acceptance_rate']:.0%} of samples"
    assert f"{summary['accepted']} ({share}" in quiet.stdout
    assert f"next: bonito report {out}" in quiet.stdout
    assert f"bonito export {out} -o {out}-dataset" in quiet.stdout

    status = bonito("status", out, "--json")
    assert status.returncode == 0
    facts = json.loads(status.stdout)
    assert facts["state"] == "finished" and facts["summary"] == summary
    assert facts["requests"] == facts["requests_done"] == 12
    shown = bonito("status", out).stdout
    assert f"{summary['accepted']} ({share}" in shown
    store = bonito("status", out / "run.sqlite")
    assert store.returncode == 1
    assert f"error: {out / 'run.sqlite'} is the run's store; give its folder, {out}." in (
        store.stderr.replace("\n", "")
    )


def test_tiny_model_refuses_a_folder_that_holds_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = bonito("tiny-model", tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path} already holds a model" in result.stderr
    assert "pass overwrite=True (--overwrite) to build it again." in result.stderr


def test_a_library_warning_is_printed_once():
    """The hub logs through its own handler; the command's log handler must not repeat it."""
    code = (
        "from huggingface_hub.utils import logging; from bonito.cli import _quiet_libraries; "
        "_quiet_libraries(); "
        "logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.count("Retrying in 1s") == 1, result.stderr


def synopsis() -> dict[tuple[str, ...], list[tuple[str, str | None]]]:
    """README's command-line synopsis: each command's words, and the options it names, each
    with the value written after it (None for a placeholder such as FILE, or alternatives)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("## The command line\n\n", 1)[1].split("\n\n", 1)[0]
    commands: dict[tuple[str, ...], list[tuple[str, str | None]]] = {}
    for line in block.splitlines():
        if named := re.match(r" {4}bonito ([a-z][a-z-]*(?: [a-z][a-z-]*)*)", line):
            options = commands.setdefault(tuple(named[1].split()), [])
        for option, value in re.findall(
            r"(?<![\w-])(--?[a-z][\w-]*)(?: ([\w.:]+))?", line.split("#")[0]
        ):
            plain = value and not value.isupper() and "|" not in value
            options.append((option, value if plain else None))
    return commands


def leaves(group, path: tuple[str, ...] = ()):
    """The commands of a (typer) click group, each with its words."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from leaves(command, (*path, name))
        else:
            yield (*path, name), command


def test_the_readme_synopsis_names_every_command_and_only_real_options_and_defaults():
    """The synopsis is written by hand: this keeps it from drifting from the commands."""
    written = synopsis()
    commands = dict(leaves(typer.main.get_command(app)))
    assert set(written) == set(commands)
    for path, named in written.items():
        params = {o: p for p in commands[path].params for o in (*p.opts, *p.secondary_opts)}
        for option, value in named:
            assert option in params or option == "-h", f"bonito {' '.join(path)} {option}"
            default = params[option].default if option in params else None
            if value is not None and default is not None and not isinstance(default, bool):
                assert str(default) == value, f"bonito {' '.join(path)} {option} {value}"
