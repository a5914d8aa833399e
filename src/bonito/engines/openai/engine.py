"""The openai engine: checking the server at start, then every prompt's requests, retried."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from bonito.engines.base import Completion, Failure, Finished, prompt_seeds
from bonito.engines.openai.answers import completions_from
from bonito.engines.openai.bridge import run_apart, stream_apart
from bonito.engines.openai.concurrency import NOT_SERVING_CAUSES, Concurrency, Stats
from bonito.engines.openai.http import (
    Answer,
    api_root,
    env_proxy,
    error_message,
    fetch,
    is_local,
    retry_after,
    to_json,
)
from bonito.errors import BonitoError
from bonito.prompt.format import TASKTYPE
from bonito.prompt.sampling import SamplingParams, derive_seed

try:
    import aiohttp
except ImportError:  # pragma: no cover - a dependency of bonito; only a broken install lacks it
    aiohttp = None  # type: ignore[assignment]

log = logging.getLogger("bonito")

PUSHBACK_STATUSES = frozenset({429, 503})
"""Answers that mean "too much load": the concurrency halves (as it does on a timeout)."""
RETRY_STATUSES = frozenset({408, 409, 424, 425, 429})
"""4xx answers worth sending again (424: TGI's "request failed during generation"); every 5xx
but NO_ENDPOINT_STATUSES is too."""
NO_ENDPOINT_STATUSES = frozenset({404, 405, 501})
"""Answers that mean "no completions endpoint here" (unless they name the model): sending
again cannot help."""
PROBE_PROMPT = f"{TASKTYPE}\n"
"""What the test request at start sends: the first line of every bonito prompt."""


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample k when the samples of a prompt are asked for one by one."""
    return seed if k == 0 else derive_seed(seed, k)


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
                "documents will leave this machine; remote_warning=False (--no-remote-warning) "
                "silences this.",
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
                f"api_key_env (--api-key-env) names {variable}, but no such environment "
                f"variable is set; export {variable} with the server's API key."
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
                    "them (%s); max_output_tokens (--max-output-tokens) will not stop this run",
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
        `served_model`: `model` if the server lists it (or lists nothing), else the one model
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
                    "it with served_model (--served-model)."
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
            "choose the served model with served_model (--served-model)."
        )

    def _unreachable(self, error: Exception) -> BonitoError:
        return BonitoError(
            f"Cannot reach an OpenAI-compatible server at {self.base_url} "
            f"({type(error).__name__}: {error or 'no answer'}); start it (docs/servers.md "
            "shows how) or correct base_url (--base-url)."
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
                        "check base_url (--base-url)."
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
                    f"{message}); check base_url (--base-url): the server's root or its /v1."
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
            else "pass api_key_env (--api-key-env), the name of the environment variable holding "
            "its key"
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
        produce = functools.partial(self._generate, prompts, sampling, seeds)
        yield from stream_apart(produce, "bonito-openai")

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
                                f"{url} answered HTTP {status} ({message}); check base_url "
                                "(--base-url) and served_model (--served-model)."
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
