"""Where a run is: a state code compares, and a detail that says more to a person."""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """A run's state; summary.json and `bonito status` write its value, then its detail."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    """A budget was reached (the detail says which); raising it continues the run."""
    INTERRUPTED = "interrupted"
    """The process ended while the run was running; the same command continues it."""

    def __str__(self) -> str:
        return self.value


def state_line(state: State, detail: str = "") -> str:
    """The state as summary.json and `bonito status` write it, such as
    "stopped: max_tasks (--max-tasks) 5 reached"."""
    return f"{state.value}: {detail}" if detail else state.value


def parse_state(line: str) -> tuple[State, str]:
    """The state and detail of a line `state_line` wrote."""
    state, _, detail = line.partition(": ")
    return State(state), detail
