"""How many requests may be in flight (AIMD), what the engine did, and whether the server is
down."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

log = logging.getLogger("bonito")

NOT_SERVING_CAUSES = frozenset({"timeout", "connection", "HTTP 429", "HTTP 503"})
"""Failures that say the server serves nobody: two requests that end on such, with no success
between, mean it is down (a 500 may be one prompt's crash: the server is up)."""


@dataclass
class Stats:
    """What the engine did: HTTP requests sent (retries included), answered and given up on,
    retries by cause, seconds slept before retries, seconds from sending to an answer summed
    over answered requests, and the concurrency after each change."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    retries: Counter = field(default_factory=Counter)
    waited: float = 0.0
    seconds: float = 0.0
    concurrency: list[int] = field(default_factory=list)


class Concurrency:
    """How many requests may be in flight (AIMD): it starts at the maximum, halves when the
    server pushes back (429, 503 or a timeout), once per burst (answers to requests sent before
    the last cut do not cut again), and grows by one after as many successes as the current
    limit, back up to the maximum. Lives on one event loop.

    It also says whether the server is down: once two requests have used up their attempts on
    failures that say it serves nobody (NOT_SERVING_CAUSES) with no success from any request
    since they were first sent, `down` holds the last error, and the
    requests still waiting fail at once instead of each spending its own attempts."""

    def __init__(self, maximum: int, start: int, stats: Stats) -> None:
        self.maximum, self.limit, self.stats = maximum, start, stats
        self.active = self.successes = self.epoch = 0
        self.succeeded_at = -math.inf
        self.given_up = 0  # requests that used up their attempts since the last success
        self.down: str | None = None
        self.retries: deque[asyncio.Future] = deque()
        self.firsts: deque[asyncio.Future] = deque()

    async def acquire(self, retry: bool = False) -> int:
        """Wait for a free slot, retries before first attempts (so a request, once sent, ends
        within about its attempts' timeouts); the epoch to pass to `release`."""
        waiters = self.retries if retry else self.firsts
        while self.active >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in waiters:
                    waiters.remove(waiter)
                else:
                    self._wake()  # pass on the wake-up this task no longer needs
                raise
        self.active += 1
        return self.epoch

    def release(self, epoch: int, outcome: str) -> None:
        """Free a slot; outcome "ok" (counts to growing), "pushback" (cuts) or "neutral"."""
        self.active -= 1
        if outcome == "ok":
            self.succeeded_at, self.given_up = time.monotonic(), 0
        if outcome == "pushback" and epoch == self.epoch:
            self._set(max(1, self.limit // 2), "the server pushed back")
            self.epoch += 1
        elif outcome == "ok" and self.limit < self.maximum:
            self.successes += 1
            if self.successes >= self.limit:
                self._set(self.limit + 1, "the server keeps up")
        self._wake()

    def give_up(self, why: str) -> None:
        """Count a request that used up its attempts with no success from any since it was
        first sent; the second such takes the server for down."""
        self.given_up += 1
        if self.given_up >= 2 and not self.down:
            self.down = why
            log.warning(
                "openai engine: the server answers nothing (%s); the requests still waiting "
                "fail at once: run the same command to send them again",
                why,
            )

    def _set(self, limit: int, why: str) -> None:
        log_at = logging.INFO if limit < self.limit or limit == self.maximum else logging.DEBUG
        log.log(log_at, "openai engine: concurrency %d -> %d (%s)", self.limit, limit, why)
        self.limit, self.successes = limit, 0
        self.stats.concurrency.append(limit)

    def _wake(self) -> None:
        free = self.limit - self.active
        while free > 0 and (self.retries or self.firsts):
            waiter = (self.retries or self.firsts).popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
