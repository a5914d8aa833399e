"""Running the engine's event loop in a thread of its own, so that plain code, any thread and
code under a running event loop can call it."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
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
    """Wraps an error that ends the whole stream, crossing from the loop thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def stream_apart(
    produce: Callable[[Callable[[T], None]], Coroutine[Any, Any, None]], name: str
) -> Iterator[list[T]]:
    """What `produce(emit)` emits, in groups of the items emitted since the last group, with
    `produce` run on an event loop in a thread of its own (so this works from plain code, from
    any thread and under a running event loop); its error is raised here, and closing the
    iterator cancels it."""
    emitted: queue.SimpleQueue = queue.SimpleQueue()
    started = threading.Event()
    handle: dict[str, Any] = {}

    async def main() -> None:
        handle["loop"], handle["task"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        try:
            await produce(emitted.put)
        except asyncio.CancelledError:
            pass
        except BaseException as error:
            emitted.put(_Fatal(error))
        finally:
            emitted.put(_DONE)

    thread = threading.Thread(target=asyncio.run, args=(main(),), name=name, daemon=True)
    thread.start()
    started.wait()
    try:
        while True:
            try:
                item = emitted.get(timeout=0.5)  # a timeout keeps Ctrl-C working
            except queue.Empty:
                continue
            group = []
            while item is not _DONE and not isinstance(item, _Fatal):
                group.append(item)
                try:
                    item = emitted.get_nowait()
                except queue.Empty:
                    break
            if group:
                yield group
            if isinstance(item, _Fatal):
                raise item.error
            if item is _DONE:
                return
    finally:
        if thread.is_alive():
            try:
                handle["loop"].call_soon_threadsafe(handle["task"].cancel)
            except RuntimeError:  # the loop just closed
                pass
        thread.join()
