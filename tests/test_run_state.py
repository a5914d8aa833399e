"""A run's state is an enum plus a detail: code compares the enum, people read the line."""

import pytest

from bonito.runs.run import run_state
from bonito.runs.state import State, parse_state, state_line


@pytest.mark.parametrize(
    ("state", "detail", "line"),
    [
        (State.FINISHED, "", "finished"),
        (State.RUNNING, "", "running"),
        (State.STOPPED, "--max-tasks 5 reached", "stopped: --max-tasks 5 reached"),
    ],
)
def test_the_line_summary_json_keeps_reads_back_as_the_state(state, detail, line):
    assert state_line(state, detail) == line
    assert parse_state(line) == (state, detail)


def test_a_stored_running_state_without_a_process_is_interrupted():
    detail = "run the same `bonito generate` command to continue"
    assert run_state("running", now_running=False) == (State.INTERRUPTED, detail)
    assert run_state(None, now_running=False) == (State.INTERRUPTED, detail)
    assert run_state("finished", now_running=True) == (State.RUNNING, "")
    stopped = run_state(
        "stopped: max_output_tokens (--max-output-tokens) 20 reached", now_running=False
    )
    assert stopped == (State.STOPPED, "max_output_tokens (--max-output-tokens) 20 reached")


def test_states_are_compared_as_codes_and_written_as_their_values():
    assert State.FINISHED == "finished" and str(State.STOPPED) == "stopped"
    assert f"{State.INTERRUPTED}" == "interrupted"


PROBE = """
import sys
from pathlib import Path
sys.modules["fcntl"] = None  # as on Windows: no fcntl to import
from filelock import FileLock
from bonito.runs.run import LOCK_FILE, running
import bonito.cli
folder = Path(sys.argv[1])
states = [running(folder)]
with FileLock(folder / LOCK_FILE):
    states.append(running(folder))
states.append(running(folder))
print(states)
"""


@pytest.mark.heavy  # starts a process
def test_a_run_is_known_running_or_not_where_there_is_no_fcntl(tmp_path):
    """The run's lock and its probe use filelock, which works where fcntl does not exist."""
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[False, True, False]"
