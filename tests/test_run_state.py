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
