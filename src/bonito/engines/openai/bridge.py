"""Running the engine's event loop in a thread of its own, so that plain code, any thread and
code under a running event loop can call it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """What `coroutine` returns, run on an event loop in a thread of its own: this works under a
    running event loop too, and Ctrl-C does not wait for it."""
    outcome: Future = Future()

    def run() -> None:
        try:
            outcome.set_result(asyncio.run(coroutine))
        except BaseException as error:
            outcome.set_exception(error)

    threading.Thread(target=run, name="bonito-openai-check", daemon=True).start()
    return outcome.result()


class _Fatal(Exception):
    """Wraps an error that ends the whole generate call, crossing from the loop thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
