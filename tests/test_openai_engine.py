"""The openai engine against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1
serving the tiny generator, alone and behind our fault-injecting proxy (tests/servers.py).
Same tasks as the in-process engine under greedy decoding; retries, backoff and failures that
are recorded and sent again; a server killed mid-run; keys that stay secret; clear errors."""

import asyncio
import functools
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler
from pathlib import Path

import pytest
from helpers import (
    GREEDY,
    completions_of,
    counts_of,
    query,
    run_cli,
    run_config,
    run_through_a_crash,
)
from servers import (
    FaultProxy,
    free_port,
    http_server,
    serving_missing,
    transformers_serve,
)
from transformers import AutoTokenizer

from bonito import BonitoError, SamplingParams, build_prompt
from bonito.engines import generate_all, load_engine
from bonito.engines.base import Failure
from bonito.engines.openai import (
    MAX_ANSWER_BYTES,
    PROBE_PROMPT,
    Answer,
    Concurrency,
    OpenAIEngine,
    Stats,
    api_root,
    completions_from,
    env_proxy,
    error_message,
    is_local,
    retry_after,
    split_tokens,
    to_json,
)
from bonito.engines.transformers import TransformersEngine
from bonito.prompt.sampling import derive_seed
from bonito.runs.run import generate_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "passages.jsonl"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """`transformers serve` with the tiny generator, for the whole module."""
    missing = serving_missing()
    if missing:
        pytest.skip(missing)
    process = transformers_serve(tiny_model, tmp_path_factory.mktemp("serve") / "server.log")
    process.start()
    yield process
    process.stop()


def test_greedy_run_through_the_server_equals_the_in_process_run(
    server, tiny_model, numbered_passages, tmp_path
):
    """Same completions (text, finish reason, token counts: so BOS is added once), the same
    tasks: the raw prompt reaches the server unchanged."""
    config = run_config(tiny_model, numbered_passages)
    local = generate_run(
        tmp_path / "local", config, lambda: TransformersEngine(str(tiny_model), device="cpu")
    )
    served = generate_run(
        tmp_path / "served",
        config,
        lambda: load_engine(str(tiny_model), "openai", base_url=server.url + "/v1"),
        engine_name="openai",
    )
    assert local.state == served.state == "finished"
    expected = completions_of(tmp_path / "local")
    # `transformers serve` says "length" whenever max_tokens tokens came, even when the last
    # was end of sequence (its _get_finish_reason), where the engines say "stop", as vLLM does
    served_rows = completions_of(tmp_path / "served")
    served_reasons = [
        (*c[:3], e[3] if c[3] == "length" and c[5] == GREEDY.max_tokens else c[3], *c[4:])
        for c, e in zip(served_rows, expected, strict=True)
    ]
    assert len(expected) == 6 and served_reasons == expected
    assert all(c[4] > 20 for c in expected)
    # ... and the checks reject a "length" sample as truncated: those are left out here
    cut = {f"{c[0]}-{c[1]}" for c, e in zip(served_rows, expected, strict=True) if c[3] != e[3]}
    tasks = [(tmp_path / f / "tasks.jsonl").read_text().splitlines() for f in ("local", "served")]
    assert [t for t in tasks[0] if json.loads(t)["id"] not in cut] == tasks[1]
    assert served.summary.accepted == local.summary.accepted - (len(tasks[0]) - len(tasks[1]))
    assert len(tasks[0]) - len(tasks[1]) <= len(cut)


def test_samples_are_asked_one_by_one_from_a_server_that_ignores_n(server, tiny_model):
    """transformers serve returns one choice whatever n is: the engine finds that out at the
    start and sends each sample alone with its own seed."""
    proxy = FaultProxy(server.url)
    try:
        engine = load_engine(str(tiny_model), "openai", base_url=proxy.url)
        assert engine.split_n and engine.model == str(tiny_model)
        prompts = [build_prompt("Glaciers move slowly.", t) for t in ("ynqa", "nli")]
        sampling = SamplingParams(n=3, temperature=0, max_tokens=16)
        results = generate_all(engine, prompts, sampling, seeds=[11, 12])
    finally:
        proxy.close()
    assert [len(r) for r in results] == [3, 3]
    assert all(c.completion_tokens > 0 and c.prompt_tokens > 10 for r in results for c in r)
    sent = {(s.prompt, s.seed, s.n) for s in proxy.seen if s.prompt != PROBE_PROMPT}
    assert sent == {
        (prompt, s, 1)
        for prompt, seed in zip(prompts, (11, 12), strict=True)
        for s in (seed, derive_seed(seed, 1), derive_seed(seed, 2))
    }


def test_a_llama_cpp_server_gets_bos_once_and_seeded_samples_one_by_one(
    llama_server, tiny_model, tiny_gguf
):
    """llama.cpp adds BOS itself (the prompt counts as many tokens as with the transformers
    tokenizer), ignores n and honours seeds: samples are asked one by one, reproducibly."""
    engine = load_engine(str(tiny_model), "openai", base_url=llama_server.url)
    assert engine.model.endswith(tiny_gguf.name) and engine.split_n  # the one model it lists
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [json.loads(line)["text"] for line in EXAMPLES.read_text().splitlines()[:3]]
    prompts = [build_prompt(t, "ynqa") for t in texts]
    stop = SamplingParams(temperature=0, max_tokens=64, stop=("<|pipe|>",))
    for prompt, (completion,) in zip(prompts, generate_all(engine, prompts, stop), strict=True):
        assert completion.prompt_tokens == len(tokenizer(prompt).input_ids)
        assert "<|pipe|>" not in completion.text and completion.finish_reason == "stop"
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=24)
    first = generate_all(engine, prompts, sampling, seeds=[1, 2, 3])
    assert generate_all(engine, prompts, sampling, seeds=[1, 2, 3]) == first
    assert generate_all(engine, prompts, sampling, seeds=[4, 5, 6]) != first
    assert [len(r) for r in first] == [2, 2, 2] and any(r[0].text != r[1].text for r in first)


SCRIPTS = [[], ["429"], ["500", "500"], ["slow"], ["drop"], ["500"] * 99]
"""What the proxy does to each new prompt in turn, attempt by attempt (then it passes)."""


def test_faults_are_retried_with_backoff_and_failures_recorded_then_resent(
    server, tiny_model, numbered_passages, tmp_path, caplog
):
    assigned: dict = {}

    def script(seen):
        if seen.prompt == PROBE_PROMPT:
            return "pass"
        steps = assigned.setdefault(seen.prompt, SCRIPTS[len(assigned) % len(SCRIPTS)])
        return steps[seen.repeat] if seen.repeat < len(steps) else "pass"

    proxy = FaultProxy(server.url, script, retry_after=1, slow_seconds=6)
    engines = []

    def load():
        engine = OpenAIEngine(
            str(tiny_model),
            base_url=proxy.url,
            concurrency=3,
            timeout=4,
            max_retries=3,
            backoff=0.2,
            max_backoff=1.0,
        )
        engines.append(engine)
        return engine

    config = run_config(
        tiny_model, numbered_passages, SamplingParams(temperature=0, max_tokens=16), 12
    )
    folder = tmp_path / "run"
    try:
        with caplog.at_level(logging.INFO, logger="bonito"):
            first = generate_run(folder, config, load)
        assert (first.state, first.summary.failed) == ("finished", 2)
        assert counts_of(folder) == (10, 2, 10, 10)
        errors = query(folder, "SELECT error FROM requests WHERE status = 'failed'")
        assert errors == [("HTTP 500: injected failure (4 attempts)",)] * 2

        by_prompt: dict = {}
        for seen in proxy.seen:
            by_prompt.setdefault(seen.prompt, []).append(seen)
        for prompt, steps in assigned.items():
            times = [s.at for s in by_prompt[prompt]]
            if len(steps) > 3:
                assert len(times) == 4  # given up after max_retries
            else:  # more if the loaded server was slow beyond the timeout once more
                assert len(times) >= len(steps) + 1, (steps, len(times))
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            if steps == ["429"]:
                assert gaps[0] >= 1.0  # Retry-After: 1 honoured
            elif steps and steps[0] == "500":
                assert all(g >= 0.1 * 2**k * 0.9 for k, g in enumerate(gaps))  # backoff grows
            elif steps == ["slow"]:
                assert gaps[0] >= 4.0  # the per-request timeout
        stats = engines[0].stats
        assert stats.retries["HTTP 429"] == 2 and stats.retries["timeout"] >= 2
        assert stats.retries["connection"] == 2 and stats.failed == 2
        assert stats.retries["HTTP 500"] == 2 * 2 + 2 * 3
        assert stats.concurrency and min(stats.concurrency) < 3  # pushed back: fewer in flight
        assert "openai engine: concurrency 3 -> 1" in caplog.text

        proxy.script = lambda seen: "pass"
        again = generate_run(folder, config, load)
        assert again.state == "finished"
        assert counts_of(folder) == (12, 0, 12, 12)
    finally:
        proxy.close()
    ids = [json.loads(line)["id"] for line in (folder / "tasks.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == again.summary.accepted


def test_a_server_killed_mid_run_and_restarted_loses_and_repeats_nothing(
    server, tiny_model, numbered_passages, tmp_path
):
    folder = tmp_path / "run"
    engines = []

    def load():
        engines.append(
            OpenAIEngine(
                str(tiny_model),
                base_url=server.url,
                concurrency=4,
                max_retries=80,
                backoff=0.2,
                max_backoff=1.0,
            )
        )
        return engines[0]

    config = run_config(
        tiny_model, numbered_passages, SamplingParams(temperature=0, max_tokens=16), 12
    )
    outcome, at_kill = run_through_a_crash(server, folder, config, load)
    assert outcome.state == "finished"
    assert 3 <= at_kill < 12
    assert counts_of(folder) == (12, 0, 12, 12)
    assert engines[0].stats.retries["connection"] > 0 and engines[0].stats.failed == 0


def test_the_api_key_is_sent_and_never_written_or_logged(
    server, tiny_model, numbered_passages, tmp_path, monkeypatch, caplog
):
    secret = "sk-test-7f3a9c1e5d"
    monkeypatch.setenv("BONITO_TEST_KEY", secret)
    proxy = FaultProxy(server.url, api_key=secret)
    folder = tmp_path / "run"
    try:
        with caplog.at_level(logging.DEBUG):
            engine = load_engine(
                str(tiny_model), "openai", base_url=proxy.url, api_key_env="BONITO_TEST_KEY"
            )
            outcome = generate_run(
                folder,
                run_config(tiny_model, numbered_passages, SamplingParams(max_tokens=8, seed=1), 3),
                lambda: engine,
                engine_name="openai",
            )
        assert outcome.state == "finished"
        assert {h.get("authorization") for h in proxy.headers} == {f"Bearer {secret}"}
        monkeypatch.setenv("BONITO_TEST_KEY", "sk-wrong")
        with pytest.raises(BonitoError, match=r"HTTP 401.*check the key in \$BONITO_TEST_KEY"):
            OpenAIEngine(base_url=proxy.url, api_key_env="BONITO_TEST_KEY")
        with pytest.raises(
            BonitoError, match=r"refused the request .*pass api_key_env \(--api-key-env\)"
        ):
            OpenAIEngine(base_url=proxy.url)
    finally:
        proxy.close()
    written = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    assert secret.encode() not in written and b"sk-wrong" not in written
    assert secret not in caplog.text and secret not in repr(engine)


def test_mistakes_end_in_one_clear_sentence_before_generating(server, tiny_model, monkeypatch):
    cases = [
        (dict(base_url="ftp://127.0.0.1/v1"), "must be an http:// or https:// URL"),
        (dict(base_url="http://me:pw@127.0.0.1/v1"), "must not carry a user name or password"),
        (dict(base_url=f"http://127.0.0.1:{free_port()}"), "Cannot reach an OpenAI-compatible"),
        (
            dict(base_url=server.url + "/nothing/v1"),
            r"completions is not an OpenAI-compatible completions endpoint \(HTTP 404",
        ),
        (dict(base_url=server.url, served_model="other"), "refused the model .*'other'"),
        (dict(base_url=server.url, api_key_env="BONITO_NO_SUCH_VAR"), "no such environment"),
        (dict(base_url=server.url, concurrency=0), "concurrency must be a whole number"),
        (dict(base_url=server.url, device="cpu"), "does not take device"),
    ]
    monkeypatch.delenv("BONITO_NO_SUCH_VAR", raising=False)
    for kwargs, message in cases:
        with pytest.raises(BonitoError, match=message) as error:
            load_engine(str(tiny_model), "openai", **kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(BonitoError, match=r"needs the server's address: base_url \(--base-url\)"):
        load_engine(str(tiny_model), "openai")


def test_a_remote_base_url_warns_once_unless_silenced(caplog):
    for host in ("localhost", "127.0.0.1", "::1", "10.1.2.3", "192.168.0.7", "fe80::1%eth0"):
        assert is_local(host), host
    for host in ("1.1.1.1", "2606:4700::1111", "no-such-host.invalid"):
        assert not is_local(host), host
    for remote_warning, lines in ((True, 1), (False, 0)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bonito"):
            with pytest.raises(BonitoError, match="Cannot reach"):  # .invalid never resolves
                OpenAIEngine(
                    base_url="http://bonito-test.invalid:9/v1", remote_warning=remote_warning
                )
        warnings = [r.getMessage() for r in caplog.records if "leave this machine" in r.message]
        assert len(warnings) == lines


def test_generate_works_from_a_thread_and_inside_an_event_loop_and_stops_when_closed(
    server, tiny_model
):
    engine = OpenAIEngine(str(tiny_model), base_url=server.url, concurrency=2)
    prompts = [build_prompt(f"Passage {i}. Bakers rise early.", "ynqa") for i in range(4)]
    sampling = SamplingParams(temperature=0, max_tokens=8)
    expected = generate_all(engine, prompts, sampling)
    found = {}

    def in_a_thread():
        found["thread"] = generate_all(engine, prompts, sampling)

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()

    async def inside_a_loop():
        return generate_all(engine, prompts, sampling)

    assert found["thread"] == asyncio.run(inside_a_loop()) == expected
    groups = engine.generate(prompts, sampling)
    first = next(groups)
    groups.close()
    assert 1 <= len(first) < 4
    assert not [t for t in threading.enumerate() if t.name == "bonito-openai"]


def test_concurrency_halves_once_per_burst_and_climbs_back():
    async def scenario():
        stats = Stats()
        limit = Concurrency(8, 8, stats)
        epochs = [await limit.acquire() for _ in range(8)]
        for epoch in epochs[:4]:  # a burst of 429s from requests sent together: one cut
            limit.release(epoch, "pushback")
        assert limit.limit == 4
        for epoch in epochs[4:]:
            limit.release(epoch, "neutral")
        blocked = asyncio.ensure_future(asyncio.gather(*(limit.acquire() for _ in range(5))))
        await asyncio.sleep(0)
        assert limit.active == 4 and not blocked.done()  # the fifth waits
        for _ in range(4 + 5 + 6 + 7 + 8):
            limit.release(limit.epoch, "ok")
            await limit.acquire()
        assert limit.limit == 8 and stats.concurrency == [4, 5, 6, 7, 8]
        blocked.cancel()

    asyncio.run(scenario())


def test_answers_headers_and_urls_are_read_as_servers_write_them():
    assert api_root("http://h:8000") == "http://h:8000/v1"
    assert api_root("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_root("https://h/api/v1/completions") == "https://h/api/v1"
    assert retry_after("3", 60) == 3.0 and retry_after("100000", 60) == 60
    assert retry_after(None, 60) is None and retry_after("soon", 60) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 60) == 0.0  # a date gone by: at once
    assert split_tokens(None, ["a", "b"]) == [0, 0]
    assert split_tokens(10, ["abc"]) == [10]
    assert sum(split_tokens(101, ["aaaa", "b", "cc"])) == 101
    answer = {
        "choices": [
            {"index": 1, "text": "x\n<|pipe|>\ny STOP z", "finish_reason": "length"},
            {"index": 0, "text": "a", "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12},
    }
    first, second = completions_from(answer, ["STOP"])
    assert (first.text, first.finish_reason, first.prompt_tokens) == ("a", "stop", 30)
    assert (second.text, second.finish_reason) == ("x\n<|pipe|>\ny ", "stop")
    assert first.completion_tokens + second.completion_tokens == 12
    no_usage = completions_from({"choices": [{"text": "t", "finish_reason": "length"}]}, [])
    assert no_usage[0].completion_tokens == 0 and no_usage[0].finish_reason == "length"
    with pytest.raises(ValueError, match="no choices"):
        completions_from({"choices": []}, [])
    assert to_json({"prompt": "Zürich\n", "top_p": 1.0}) == '{"prompt":"Zürich\\n","top_p":1.0}'


def test_a_proxy_named_in_the_environment_is_used_unless_no_proxy_exempts_the_host(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert env_proxy("http://10.0.0.5:8000/v1") == "http://proxy.example:3128"
    assert env_proxy("https://gpu.example.org/v1") is None  # no HTTPS_PROXY
    monkeypatch.setenv("NO_PROXY", "localhost,10.0.0.5")
    assert env_proxy("http://10.0.0.5:8000/v1") is None


class QuietFiles(SimpleHTTPRequestHandler):
    """What `python -m http.server` runs: files for GET, HTTP 501 for POST."""

    def log_message(self, *args) -> None:
        pass


def test_a_plain_web_server_is_refused_at_once_with_a_short_reason(tmp_path):
    handler = functools.partial(QuietFiles, directory=str(tmp_path))
    with http_server(handler) as url:
        began = time.monotonic()
        with pytest.raises(BonitoError) as error:
            OpenAIEngine("tiny", base_url=url)
    assert time.monotonic() - began < 5
    assert str(error.value) == (
        f"{url}/v1/completions is not an OpenAI-compatible completions endpoint (HTTP 501: "
        "Unsupported method ('POST')); check base_url (--base-url): the server's root or its /v1."
    )


def test_error_messages_are_one_short_line():
    page = b"<!DOCTYPE HTML>\n<html>\n<body><h1>Error</h1>" + b"<p>x</p>" * 500 + b"</body></html>"
    assert error_message(Answer(502, "Bad Gateway", page)) == "Bad Gateway"
    assert error_message(Answer(500, "Oops", b"Traceback (most recent call last):\n  x")) == (
        "Traceback (most recent call last):"
    )
    detail = json.dumps({"error": {"message": "no\nsuch " + "model " * 100}}).encode()
    assert error_message(Answer(400, "Bad Request", detail)) == ("no such " + "model " * 40)[:200]


def test_an_error_body_never_keeps_a_part_of_the_key_and_is_printable_text():
    key = "sk-SECRET-0123456789abcdefghijklmnopqrstuvwxyz"
    for at in range(150, 210, 7):  # the key straddles the cut at MAX_ERROR_CHARS
        body = json.dumps({"error": {"message": "x" * at + f" Bearer {key} " + "y" * 50}})
        message = error_message(Answer(500, "Oops", body.encode()), key)
        assert "sk-S" not in message
    binary = bytes(range(256)) * 8
    message = error_message(Answer(500, "Oops", binary))
    assert message.isprintable() and len(message) <= 200


class FailingServer(BaseHTTPRequestHandler):
    """A server that passes the engine's test request, then answers every completion request
    with HTTP 500 and an HTML page."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.reply(200, "Ok", b'{"data": [{"id": "tiny"}]}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["prompt"] == PROBE_PROMPT:
            self.reply(200, "OK", b'{"choices": [{"text": "x", "finish_reason": "length"}]}')
        else:
            page = b"<html><head><title>500</title></head><body>" + b"<p>oops</p>" * 99
            self.reply(500, "Internal Server Error", page + b"</body></html>")

    def reply(self, status: int, reason: str, body: bytes) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


OPENAI_GENERATE = ["generate", "-t", "ynqa", "--engine", "openai"]
"""`bonito generate` through the openai engine, before the inputs and the model."""


def test_a_run_whose_requests_failed_exits_1_and_shows_the_last_error(
    tiny_model, numbered_passages, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    args = [*OPENAI_GENERATE, numbered_passages, "--model", tiny_model]
    args += ["--max-retries", "0", "--limit", "3", "--max-tokens", "8", "--output", run]
    with http_server(FailingServer) as url:
        code, _, err = run_cli([*args, "--base-url", url], capsys, monkeypatch)
    last_error = "HTTP 500: Internal Server Error (1 attempt)"
    assert code == 1
    assert err.endswith(
        f"error: 3 requests failed (last error: {last_error}); run the same command to retry "
        "them.\n"
    )
    record = json.loads((run / "summary.json").read_text())
    assert record["state"] == "finished"
    assert (record["summary"]["failed_requests"], record["summary"]["last_error"]) == (
        3,
        last_error,
    )
    code, out, _ = run_cli(["status", run], capsys, monkeypatch)
    assert code == 0 and "last error" in out and "Internal Server Error" in out


class StubServer(BaseHTTPRequestHandler):
    """A server that lists the model "tiny", passes the engine's test request, then answers every
    completion request with `answer(request)`: (status, headers, body). Subclasses say what."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.reply(200, {}, b'{"data": [{"id": "tiny"}]}')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request["prompt"] == PROBE_PROMPT:
            self.reply(200, {}, b'{"choices": [{"text": "x", "finish_reason": "length"}]}')
        else:
            self.reply(*self.answer(request))

    def answer(self, request: dict) -> tuple[int, dict, bytes]:
        raise NotImplementedError

    def reply(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in (headers | {"Content-Length": str(len(body))}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client stopped reading
            pass


def stub(answer) -> type[StubServer]:
    """A StubServer whose completion answers are `answer(request)`."""
    return type("Stub", (StubServer,), {"answer": lambda self, request: answer(request)})


def choices_answer(choices: list, usage: dict | None = None) -> tuple[int, dict, bytes]:
    payload = {"choices": choices} | ({"usage": usage} if usage else {})
    return 200, {}, json.dumps(payload).encode()


def generate_through(url: str, **options) -> list:
    """What a quick engine (2 attempts, short backoff) gives for two prompts against `url`."""
    engine = OpenAIEngine("tiny", base_url=url, max_retries=1, backoff=0.01, **options)
    sampling = SamplingParams(max_tokens=8, seed=1)
    return [result for group in engine.generate(["a", "b"], sampling) for result in group]


@pytest.mark.parametrize(
    "choices, usage",
    [
        ([{"text": "t", "finish_reason": "stop"}], {"completion_tokens": float("inf")}),
        ([{"text": "t", "finish_reason": "stop"}], {"completion_tokens": 10**30}),
        ([{"text": "t", "finish_reason": "stop"}], {"completion_tokens": -3}),
        ([{"text": "t", "finish_reason": "stop"}], {"prompt_tokens": float("nan")}),
        ([{"text": None, "finish_reason": "stop"}], None),
        ([{"text": "t", "finish_reason": "stop"}] * 3, None),
    ],
    ids=["infinite", "huge", "negative", "nan", "null-text", "three-choices-for-one"],
)
def test_answers_with_absurd_counts_null_text_or_extra_choices_are_retried_then_failures(
    choices, usage
):
    with http_server(stub(lambda request: choices_answer(choices, usage))) as url:
        results = generate_through(url)
    assert sorted(index for index, _ in results) == [0, 1]
    for _, result in results:
        assert isinstance(result, Failure)
        assert result.reason.startswith("unreadable answer (") and "(2 attempts)" in result.reason


def test_a_run_against_a_server_with_absurd_token_counts_records_failures(
    tiny_model, numbered_passages, tmp_path, capsys, monkeypatch
):
    huge = choices_answer([{"text": "t", "finish_reason": "stop"}], {"completion_tokens": 10**30})
    run = tmp_path / "run"
    args = [*OPENAI_GENERATE, numbered_passages, "--model", tiny_model]
    args += ["--max-retries", "0", "--limit", "2", "--max-tokens", "8", "--output", run]
    with http_server(stub(lambda request: huge)) as url:
        code, _, err = run_cli([*args, "--base-url", url], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert counts_of(run) == (0, 2, 0, 0)


def hang(request: dict) -> tuple[int, dict, bytes]:
    time.sleep(3)
    return choices_answer([{"text": "late", "finish_reason": "stop"}])


@pytest.mark.parametrize(
    "answer",
    [hang, lambda request: (429, {"Retry-After": "100000"}, b"busy")],
    ids=["answers-after-the-timeout", "retry-after-a-day"],
)
def test_a_hung_or_stalling_server_fails_every_request_within_the_timeouts(answer):
    prompts = [f"p{i}" for i in range(40)]
    with http_server(stub(answer)) as url:
        engine = OpenAIEngine(
            "tiny", base_url=url, timeout=0.5, max_retries=1, backoff=0.01, concurrency=4
        )
        began = time.monotonic()
        results = [r for group in engine.generate(prompts, SamplingParams(seed=1)) for r in group]
        took = time.monotonic() - began
    assert sorted(index for index, _ in results) == list(range(40))
    assert all(isinstance(result, Failure) for _, result in results)
    assert took < 5  # two requests' attempts, not 40 requests' one after the other
    reasons = {result.reason for _, result in results}
    assert any(reason.startswith("given up: the server is down (") for reason in reasons)


def test_one_prompt_that_always_fails_does_not_take_the_server_for_down():
    def answer(request):
        if request["prompt"] == "poison":
            return 500, {}, b"crashed"
        return choices_answer([{"text": "fine", "finish_reason": "stop"}])

    prompts = ["poison", "a", "b", "c"]
    with http_server(stub(answer)) as url:
        engine = OpenAIEngine("tiny", base_url=url, max_retries=1, backoff=0.01, concurrency=1)
        results = dict(
            r for group in engine.generate(prompts, SamplingParams(seed=1)) for r in group
        )
    assert results[0] == Failure("HTTP 500: crashed (2 attempts)")
    assert [results[i][0].text for i in (1, 2, 3)] == ["fine"] * 3


def test_an_answer_too_long_to_read_is_unreadable_and_its_rest_is_not_read():
    text = "x" * (MAX_ANSWER_BYTES + 1000)
    with http_server(stub(lambda request: choices_answer([{"text": text}]))) as url:
        results = generate_through(url)
    for _, result in results:
        assert result == Failure("unreadable answer (an answer over 8 MiB) (2 attempts)")


def test_max_output_tokens_stops_a_run_against_a_server_that_sends_no_usage(
    tiny_model, numbered_passages, tmp_path, capsys, monkeypatch
):
    text = "Yes or no?\n<|pipe|>\nYes, the note says so."
    run = tmp_path / "run"
    args = [*OPENAI_GENERATE, numbered_passages, "--model", tiny_model]
    args += ["--concurrency", "1", "--limit", "8", "--max-output-tokens", "20", "--output", run]
    no_usage = choices_answer([{"text": text, "finish_reason": "stop"}])
    with http_server(stub(lambda request: no_usage)) as url:
        code, _, _ = run_cli([*args, "--base-url", url], capsys, monkeypatch)
    record = json.loads((run / "summary.json").read_text())
    assert (
        code == 0
        and record["state"] == "stopped: max_output_tokens (--max-output-tokens) 20 reached"
    )
    tokens = len(
        AutoTokenizer.from_pretrained(tiny_model)(text, add_special_tokens=False).input_ids
    )
    assert {row[5] for row in completions_of(run)} == {tokens}
    assert len(completions_of(run)) == -(-20 // tokens) < 8


def test_settings_carried_from_a_vllm_sampling_params_go_to_the_server():
    bodies = []

    def answer(request):
        bodies.append(request)
        return choices_answer([{"text": "t", "finish_reason": "stop"}])

    sampling = SamplingParams(max_tokens=8, seed=1, extra={"top_k": 5, "stop_token_ids": [7]})
    with http_server(stub(answer)) as url:
        engine = OpenAIEngine("tiny", base_url=url, max_retries=0)
        [group] = engine.generate(["a"], sampling)
    assert group[0][1][0].text == "t"
    assert bodies[0]["top_k"] == 5 and bodies[0]["stop_token_ids"] == [7]
    assert bodies[0]["max_tokens"] == 8
