"""A generator behind an OpenAI-compatible server (vLLM, llama.cpp's llama-server, TGI, Ollama,
`transformers serve`): the raw bonito prompt to the legacy `/v1/completions` endpoint, never a
chat template (it would change the text the generator was trained on), many requests in flight,
retries with backoff, and a concurrency that halves when the server pushes back and grows again
after."""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import math
import os
import queue
import random
import socket
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from bonito.engines.base import Completion, Failure, Finished, prompt_seeds
from bonito.errors import BonitoError
from bonito.prompt.sampling import SamplingParams, derive_seed

try:
    import aiohttp
except ImportError:  # pragma: no cover - a dependency of bonito; only a broken install lacks it
    aiohttp = None  # type: ignore[assignment]

log = logging.getLogger("bonito")
T = TypeVar("T")

PUSHBACK_STATUSES = frozenset({429, 503})
"""Answers that mean "too much load": the concurrency halves (as it does on a timeout)."""
RETRY_STATUSES = frozenset({408, 409, 424, 425, 429})
"""4xx answers worth sending again (424: TGI's "request failed during generation"); every 5xx
but NO_ENDPOINT_STATUSES is too."""
NO_ENDPOINT_STATUSES = frozenset({404, 405, 501})
"""Answers that mean "no completions endpoint here" (unless they name the model): sending
again cannot help."""
NOT_SERVING_CAUSES = frozenset({"timeout", "connection", "HTTP 429", "HTTP 503"})
"""Failures that say the server serves nobody: two requests that end on such, with no success
between, mean it is down (a 500 may be one prompt's crash: the server is up)."""
MAX_ERROR_CHARS = 200
"""Longest server message kept in an error."""
MAX_ANSWER_BYTES = 8 * 2**20
"""Longest answer body read; a longer one is unreadable (and its rest is not read)."""
MAX_TOKEN_COUNT = 2**31 - 1
"""Largest token count believed in an answer's usage."""
PROBE_PROMPT = "<|tasktype|>\n"
"""What the test request at start sends: the first line of every bonito prompt."""


def api_root(url: str) -> str:
    """The server's API root ending in /v1, from its root, its /v1 or its /v1/completions;
    BonitoError for anything but an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BonitoError(
            "base_url (--base-url) must be an http:// or https:// URL such as "
            f"http://127.0.0.1:8000/v1, got '{url}'."
        )
    if parts.username or parts.password:
        raise BonitoError(
            "base_url (--base-url) must not carry a user name or password (they would show in "
            "logs); put the key in an environment variable and name it with api_key_env "
            "(--api-key-env)."
        )
    path = parts.path.rstrip("/")
    path = path.removesuffix("/completions").removesuffix("/chat")
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_local(host: str) -> bool:
    """Whether `host` is this machine or a private network (every address it resolves to is
    loopback, private or link-local); unresolvable names count as not local."""
    host = host.strip("[]").split("%")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return bool(addresses) and all(
        a.is_loopback or a.is_private or a.is_link_local for a in addresses
    )


def retry_after(value: str | None, longest: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), at most `longest`;
    None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), longest)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found. vLLM and llama.cpp
    leave stop strings out; `transformers serve` keeps the one it stopped at."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def split_tokens(total: int | None, texts: Sequence[str]) -> list[int]:
    """Per-choice completion tokens from a response's usage, which counts all choices together:
    exact for one choice; for several, the total apportioned by text length (the sum stays
    exact); zeros when the server sent no usage (nothing is guessed)."""
    if total is None:
        return [0] * len(texts)
    if len(texts) == 1:
        return [total]
    weights = [len(t) + 1 for t in texts]
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(texts)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def token_count(value: Any) -> int | None:
    """A token count from an answer's usage: None if absent; ValueError unless a whole number
    from 0 to MAX_TOKEN_COUNT (a server that sends Infinity or 10**30 is not believed)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a token count of {value!r}")
    if not (0 <= value <= MAX_TOKEN_COUNT) or value != int(value):
        raise ValueError(f"a token count of {value!r}")
    return int(value)


def completions_from(
    payload: Any,
    stop: Sequence[str],
    n: int | None = None,
    count: Callable[[list[str]], list[int]] | None = None,
) -> list[Completion]:
    """Our completions from a /v1/completions answer with at most `n` choices, their tokens
    counted by `count` if the answer has no usage; ValueError if it is not one."""
    try:
        choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
        texts = [c["text"] for c in choices]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("a choice's text is not a string")
        usage = payload.get("usage") or {}
        prompt_tokens = token_count(usage.get("prompt_tokens")) or 0
        total = token_count(usage.get("completion_tokens"))
        reasons = [c.get("finish_reason") for c in choices]
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"not a completions answer: {type(error).__name__} {error}") from None
    if not choices:
        raise ValueError("an answer with no choices")
    if n is not None and len(choices) > n:
        raise ValueError(f"{len(choices)} choices where {n} were asked for")
    counts = count(texts) if total is None and count else split_tokens(total, texts)
    completions = []
    for text, reason, tokens in zip(texts, reasons, counts, strict=True):
        text, stopped = cut_at_stop(text, stop)
        ended = "length" if reason in ("length", "max_tokens") and not stopped else "stop"
        completions.append(Completion(text, ended, prompt_tokens, tokens))
    return completions


def env_proxy(url: str) -> str | None:
    """The proxy HTTP_PROXY or HTTPS_PROXY names for `url`, unless NO_PROXY exempts its host,
    read as requests reads them; None if there is none."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def to_json(value: Any) -> str:
    """A request body: compact JSON, UTF-8 text left as it is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass
class Answer:
    """An HTTP answer: its body read in full, or its first MAX_ANSWER_BYTES if `cut`."""

    status: int
    reason: str
    body: bytes
    retry_after: str | None = None
    cut: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not, or was too long to read."""
        if self.cut:
            raise ValueError(f"an answer over {MAX_ANSWER_BYTES // 2**20} MiB")
        return json.loads(self.body)


async def fetch(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None
) -> Answer:
    """GET `url`, or POST `body` to it as JSON, and read the answer (up to MAX_ANSWER_BYTES);
    aiohttp.ClientError or asyncio.TimeoutError if no answer came."""
    request = session.get(url) if body is None else session.post(url, json=body)
    async with request as response:
        content = bytearray()
        async for chunk in response.content.iter_any():
            content += chunk
            if len(content) > MAX_ANSWER_BYTES:
                break
        cut = len(content) > MAX_ANSWER_BYTES
        return Answer(
            response.status,
            response.reason or "",
            bytes(content[:MAX_ANSWER_BYTES]),
            response.headers.get("Retry-After"),
            cut,
        )


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


def error_message(answer: Answer, secret: str | None = None) -> str:
    """The server's own words for an error answer in one short line of printable text, with
    the API key blanked out: a JSON error's message, the first line of a text, the reason phrase
    of an HTML page."""
    try:
        payload = answer.json()
    except ValueError:
        text = answer.body.decode("utf-8", "replace").strip()
        payload = answer.reason if text.startswith("<") else text.partition("\n")[0]
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            payload = error.get("message") or error.get("detail") or error
        else:
            payload = payload.get("message") or payload.get("detail") or error
    text = " ".join(str(payload).split()) or answer.reason
    if secret:
        text = text.replace(secret, "***")  # before the cut, which could leave a part of it
    return "".join(c if c.isprintable() else "\ufffd" for c in text[:MAX_ERROR_CHARS])


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample k when the samples of a prompt are asked for one by one."""
    return seed if k == 0 else derive_seed(seed, k)


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


class _Fatal(Exception):
    """Wraps an error that ends the whole generate call, crossing from the loop thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


class OpenAIEngine:
    """Prompts sent to an OpenAI-compatible server's legacy completions endpoint, as they are
    (the server's tokenizer adds BOS, as vLLM's LLM.generate does), with n, temperature, top_p,
    max_tokens, stop and each prompt's seed.

    Up to `concurrency` requests are in flight; timeouts, dropped connections, 429 and 5xx
    answers are sent again up to `max_retries` times after an exponential backoff with jitter,
    or after the server's Retry-After; 429, 503 and timeouts halve the concurrency for a while.
    A prompt that still fails comes back as a Failure with the reason (a run records it and sends
    it again when resumed); 401, 403, 404, 405 and 501 end the call with a BonitoError, as they
    would fail every request. Servers that return fewer than n choices (`transformers serve`,
    llama.cpp) get one request per sample, sample k seeded with derive_seed(seed, k) (the
    prompt's seed for k = 0). Token counts come from the answer's `usage`: exact with one choice
    a request, apportioned by length among several (the total exact), counted with `model`'s
    tokenizer when the server sends no usage. Unreadable answers (absurd counts, a text that is
    not a string, more choices than asked for, a body over MAX_ANSWER_BYTES) are retried as a 5xx
    is; Retry-After waits at most `timeout`.

    The API key is read from the environment variable `api_key_env` and only ever sent in the
    Authorization header. A base URL that is neither loopback nor private logs one warning that
    the documents leave this machine, unless `remote_warning` is False. `extra_body` adds fields
    to every request (say, a server's own sampling options), then `sampling.extra` (settings
    carried from a vLLM SamplingParams); ours take precedence."""

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str,
        served_model: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 16,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        remote_warning: bool = True,
        extra_body: dict[str, Any] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise BonitoError(
                f"The openai engine does not take {', '.join(sorted(unknown))}; it takes "
                "base_url, served_model, api_key_env, concurrency, timeout, connect_timeout, "
                "max_retries, backoff, max_backoff, remote_warning and extra_body."
            )
        if aiohttp is None:
            raise BonitoError("The openai engine needs aiohttp: `pip install aiohttp`.")
        for label, value, least in (
            ("concurrency", concurrency, 1),
            ("max_retries", max_retries, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise BonitoError(
                    f"{label} must be a whole number of at least {least}, got {value!r}."
                )
        for label, seconds in (
            ("timeout", timeout),
            ("connect_timeout", connect_timeout),
            ("backoff", backoff),
            ("max_backoff", max_backoff),
        ):
            if not isinstance(seconds, (int, float)) or seconds <= 0:
                raise BonitoError(f"{label} must be a number of seconds above 0, got {seconds!r}.")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise BonitoError(f"extra_body must be a JSON object, got {extra_body!r}.")
        self.base_url = api_root(base_url)
        self.concurrency, self.timeout, self.connect_timeout = concurrency, timeout, connect_timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.extra_body = dict(extra_body or {})
        self._tokenizer = model
        self._counter: Callable[[list[str]], list[int]] | None = None
        self._key = self._read_key(api_key_env)
        self._key_env = api_key_env
        self._limit = concurrency
        self._proxy = env_proxy(self.base_url)
        self.stats = Stats()
        self.split_n = False
        """True once the server is known to return fewer choices than n."""
        host = urlsplit(self.base_url).hostname or ""
        if remote_warning and not is_local(host):
            log.warning(
                "openai engine: %s is not on this machine or a private network, so the "
                "documents will leave this machine (--no-remote-warning silences this).",
                self.base_url,
            )
        self.model = self._connect(served_model, model)
        log.info(
            "openai engine: %s at %s, up to %d requests in flight",
            self.model,
            self.base_url,
            concurrency,
        )

    def __repr__(self) -> str:
        model = getattr(self, "model", None)
        return f"OpenAIEngine(model={model!r}, base_url={self.base_url!r})"

    @staticmethod
    def _read_key(variable: str | None) -> str | None:
        if not variable:
            return None
        key = os.environ.get(variable, "").strip()
        if not key:
            raise BonitoError(
                f"--api-key-env names {variable}, but no such environment variable is set; "
                f"export {variable} with the server's API key."
            )
        return key

    def _count(self, texts: list[str]) -> list[int]:
        """Tokens in each text by the generator's tokenizer (`model`), loaded the first time a
        server sends no usage; zeros, with one warning, if there is none to load."""
        if self._counter is None:
            from bonito.read.chunking import Chunker

            try:
                self._counter = Chunker.from_model(str(self._tokenizer)).count
            except BonitoError as error:
                log.warning(
                    "openai engine: the server sends no token counts and bonito cannot count "
                    "them (%s); --max-output-tokens will not stop this run",
                    error,
                )
                self._counter = lambda texts: [0] * len(texts)
        return self._counter(texts)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "bonito"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _session(
        self, connections: int, timeout: float, keepalive: bool = True
    ) -> aiohttp.ClientSession:
        """An aiohttp session for this server (to make inside the event loop that uses it).
        TLS takes aiohttp's default context, made once when aiohttp is imported."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, force_close=not keepalive),
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=timeout, connect=self.connect_timeout),
            proxy=self._proxy,
            json_serialize=to_json,
        )

    # checking the server before anything is sent
    def _connect(self, served_model: str | None, model: str | None) -> str:
        """The served model's name, after a one-token request that shows the server answers,
        accepts the key and serves that model; BonitoError with one sentence if not. Without
        --served-model: `model` if the server lists it (or lists nothing), else the one model
        it lists; never a guess among several."""
        return run_apart(self._check(served_model, model))

    async def _check(self, served_model: str | None, model: str | None) -> str:
        """What `_connect` does, on an event loop."""
        # no keep-alive: some servers drop a connection after a 500
        async with self._session(1, min(self.timeout, 120.0), keepalive=False) as session:
            listed = await self._listed_models(session)
            if served_model:
                candidates = [served_model]
            elif listed and len(listed) == 1 and model not in listed:
                candidates = [listed[0]] + ([model] if model else [])
            elif model:
                candidates = [model]
            else:
                raise BonitoError(
                    f"The server at {self.base_url} does not say which model it serves; name "
                    "it with --served-model."
                )
            refusals = []
            for name in candidates:
                refusal = await self._probe(session, name)
                if refusal is None:
                    return name
                refusals.append(f"'{name}': {refusal}")
        offered = f"; it lists {', '.join(listed)}" if listed else ""
        raise BonitoError(
            f"The server at {self.base_url} refused the model ({'; '.join(refusals)}){offered}; "
            "choose the served model with --served-model."
        )

    def _unreachable(self, error: Exception) -> BonitoError:
        return BonitoError(
            f"Cannot reach an OpenAI-compatible server at {self.base_url} "
            f"({type(error).__name__}: {error or 'no answer'}); start it (docs/servers.md "
            "shows how) or correct --base-url."
        )

    async def _listed_models(self, session: aiohttp.ClientSession) -> list[str] | None:
        """The ids /v1/models lists, or None if the server does not say."""
        try:
            answer = await fetch(session, f"{self.base_url}/models")
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise self._unreachable(error) from None
        if answer.status in (401, 403):
            raise self._auth_error(answer)
        try:
            return [str(m["id"]) for m in answer.json()["data"]] if answer.ok else None
        except (ValueError, KeyError, TypeError):
            return None

    async def _probe(self, session: aiohttp.ClientSession, name: str) -> str | None:
        """None if the server generates for `name`, else its reason for refusing the model;
        raises for an unreachable server, a refused key or a missing endpoint. Learns whether
        the server honours n (asking for two one-token samples, then for one)."""
        url = f"{self.base_url}/completions"
        body = self.extra_body | {
            "model": name,
            "prompt": PROBE_PROMPT,
            "max_tokens": 1,
            "temperature": 1.0,
        }
        for n in (2, 1):
            try:
                answer = await fetch(session, url, body | {"n": n})
            except aiohttp.ConnectionTimeoutError as error:
                raise self._unreachable(error) from None
            except asyncio.TimeoutError:
                log.warning("openai engine: the test request timed out; going on")
                return None
            except aiohttp.ClientError as error:
                raise self._unreachable(error) from None
            status = answer.status
            if answer.ok:
                try:
                    choices = len(completions_from(answer.json(), ()))
                except ValueError as error:
                    raise BonitoError(
                        f"{url} does not answer as an OpenAI-compatible server does ({error}); "
                        "check --base-url."
                    ) from None
                self.split_n = n == 1 or choices < n
                return None
            if status in (401, 403):
                raise self._auth_error(answer)
            message = error_message(answer, self._key)
            names_model = "model" in message.lower() or name in message
            if status in NO_ENDPOINT_STATUSES and not names_model:
                raise BonitoError(
                    f"{url} is not an OpenAI-compatible completions endpoint (HTTP {status}: "
                    f"{message}); check --base-url: the server's root or its /v1."
                )
            if n == 2 and not names_model and status >= 400:
                continue  # perhaps n=2 is what it refuses: ask for one sample
            if status >= 500 or status in RETRY_STATUSES:
                log.warning(
                    "openai engine: the test request got HTTP %d (%s); going on, requests are "
                    "retried",
                    status,
                    message,
                )
                return None
            return f"HTTP {status}: {message}"
        return None

    def _auth_error(self, answer: Answer) -> BonitoError:
        fix = (
            f"check the key in ${self._key_env}"
            if self._key_env
            else "pass --api-key-env with the name of the environment variable holding its key"
        )
        return BonitoError(
            f"The server at {self.base_url} refused the request (HTTP {answer.status}: "
            f"{error_message(answer, self._key)}); {fix}."
        )

    # generating
    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]:
        """Every prompt once, in groups of those that finished since the last group. The
        requests run on an event loop in a thread of their own, so this works from plain code,
        from any thread and under a running event loop; closing the iterator cancels what is
        still in flight."""
        seeds = prompt_seeds(sampling, len(prompts), seeds)
        if not prompts:
            return
        finished: queue.SimpleQueue = queue.SimpleQueue()
        started = threading.Event()
        handle: dict[str, Any] = {}

        async def main() -> None:
            handle["loop"], handle["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            try:
                await self._generate(prompts, sampling, seeds, finished.put)
            except asyncio.CancelledError:
                pass
            except BaseException as error:
                finished.put(_Fatal(error))
            finally:
                finished.put(_DONE)

        thread = threading.Thread(
            target=asyncio.run, args=(main(),), name="bonito-openai", daemon=True
        )
        thread.start()
        started.wait()
        try:
            while True:
                try:
                    item = finished.get(timeout=0.5)  # a timeout keeps Ctrl-C working
                except queue.Empty:
                    continue
                group = []
                while item is not _DONE and not isinstance(item, _Fatal):
                    group.append(item)
                    try:
                        item = finished.get_nowait()
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

    async def _generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingParams,
        seeds: Sequence[int],
        emit: Callable[[tuple[int, list[Completion] | Failure]], None],
    ) -> None:
        limit = Concurrency(self.concurrency, self._limit, self.stats)
        session = self._session(self.concurrency, self.timeout)

        async def one(index: int) -> None:
            result = await self._prompt(session, limit, prompts[index], sampling, seeds[index])
            emit((index, result))

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(prompts))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
            self._limit = limit.limit

    async def _prompt(
        self,
        session: aiohttp.ClientSession,
        limit: Concurrency,
        prompt: str,
        sampling: SamplingParams,
        seed: int,
    ) -> list[Completion] | Failure:
        """A prompt's n completions: one request for all n, or one a sample where the server
        is known not to honour n (also for the samples a short answer left out)."""
        n, have = sampling.n, []
        if n == 1 or not self.split_n:
            first = await self._request(session, limit, self._body(prompt, sampling, seed, n))
            if isinstance(first, Failure) or len(first) == n:
                return first
            if not self.split_n:
                self.split_n = True
                log.info(
                    "openai engine: the server gave %d of %d choices; asking for samples one by "
                    "one",
                    len(first),
                    n,
                )
            have = first
        rest = await asyncio.gather(
            *(
                self._request(session, limit, self._body(prompt, sampling, sample_seed(seed, k), 1))
                for k in range(len(have), n)
            )
        )
        for result in rest:
            if isinstance(result, Failure):
                return result
        return have + [result[0] for result in rest if not isinstance(result, Failure)]

    def _body(self, prompt: str, sampling: SamplingParams, seed: int, n: int) -> dict[str, Any]:
        body = (
            self.extra_body
            | sampling.extra
            | {
                "model": self.model,
                "prompt": prompt,
                "n": n,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens,
                "seed": seed,
            }
        )
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        return body

    async def _request(
        self, session: aiohttp.ClientSession, limit: Concurrency, body: dict[str, Any]
    ) -> list[Completion] | Failure:
        """One completions request, sent again after failures that may pass; its completions,
        or a Failure saying what happened the last time."""
        url, stop = f"{self.base_url}/completions", body.get("stop", ())
        began = time.monotonic()
        for attempt in range(self.max_retries + 1):
            epoch = await limit.acquire(retry=attempt > 0)
            outcome, wait = "neutral", None
            try:
                if limit.down:
                    self.stats.failed += 1
                    return Failure(f"given up: the server is down ({limit.down})")
                self.stats.sent += 1
                sent = time.perf_counter()
                try:
                    answer = await fetch(session, url, body)
                except asyncio.TimeoutError:
                    outcome, cause = "pushback", "timeout"
                    why = f"timed out after {self.timeout:g}s"
                except aiohttp.ClientError as error:
                    cause, why = "connection", f"connection failed ({type(error).__name__})"
                else:
                    status = answer.status
                    if answer.ok:
                        try:
                            completions = completions_from(
                                answer.json(), stop, body["n"], self._count
                            )
                        except ValueError as error:
                            cause, why = "unreadable", f"unreadable answer ({error})"
                        else:
                            outcome = "ok"
                            self.stats.answered += 1
                            self.stats.seconds += time.perf_counter() - sent
                            return completions
                    else:
                        message = error_message(answer, self._key)
                        cause, why = f"HTTP {status}", f"HTTP {status}: {message}"
                        if status in (401, 403):
                            raise self._auth_error(answer)
                        if status in NO_ENDPOINT_STATUSES:
                            raise BonitoError(
                                f"{url} answered HTTP {status} ({message}); check --base-url "
                                "and --served-model."
                            )
                        if status < 500 and status not in RETRY_STATUSES:
                            self.stats.failed += 1
                            return Failure(why)
                        if status in PUSHBACK_STATUSES:
                            outcome = "pushback"
                        wait = retry_after(answer.retry_after, self.timeout)
            finally:
                limit.release(epoch, outcome)
            if attempt == self.max_retries:
                break
            if wait is None:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                wait = delay / 2 + random.uniform(0, delay / 2)
            else:
                wait *= 1 + random.uniform(0, 0.1)
            self.stats.retries[cause] += 1
            self.stats.waited += wait
            await asyncio.sleep(wait)
        self.stats.failed += 1
        attempts = self.max_retries + 1
        why = f"{why} ({attempts} attempt{'s' if attempts > 1 else ''})"
        if limit.succeeded_at < began and cause in NOT_SERVING_CAUSES:
            limit.give_up(why)
        return Failure(why)
