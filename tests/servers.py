"""Real servers for the tests and benchmarks of the openai engine: `transformers serve` and
llama-cpp-python's server run as processes on 127.0.0.1, and a small fault-injecting HTTP proxy
on loopback that stands in front of one (our own code, asyncio): it answers chosen requests with
429 (Retry-After), 500, a slow answer or a dropped connection, passes the rest to the real
server, and logs what it did; `http_server` runs a standard-library handler (a plain web
server, a stub) in a thread."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A standard-library HTTP server with `handler` on 127.0.0.1, in a thread: its URL, for as
    long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="http-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def serving_missing() -> str | None:
    """Why `transformers serve` cannot run here, or None."""
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed"
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        return "`transformers serve` needs `pip install 'transformers[serving]'`"
    if importlib.util.find_spec("transformers.cli.serving.completion") is None:
        return "this transformers has no /v1/completions in `transformers serve` (5.x has)"
    return None


def llama_cpp_server_missing(convert_script: Path) -> str | None:
    """Why llama-cpp-python's OpenAI-compatible server cannot run here on a converted tiny
    model, or None."""
    for module, extra in (
        ("llama_cpp", "llama-cpp-python"),
        ("gguf", "gguf"),
        ("sse_starlette", "llama-cpp-python[server]"),
        ("starlette_context", "llama-cpp-python[server]"),
        ("pydantic_settings", "llama-cpp-python[server]"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"llama-cpp-python's server needs `pip install '{extra}'`"
    if not convert_script.is_file():
        return f"{convert_script} (the GGUF converter) is missing"
    return None


class ServerProcess:
    """A server process on a fixed loopback port: started, waited for (GET `health` answers
    200), killed and started again on the same port; its output goes to `log`."""

    def __init__(self, command: list[str], port: int, log: Path, health: str = "/health"):
        self.command, self.port, self.log, self.health = command, port, log, health
        self.process: subprocess.Popen | None = None
        self.started_in = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        began = time.monotonic()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"},
                start_new_session=True,
            )
        while not self.ready():
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{tail}")
            if time.monotonic() - began > timeout:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout:.0f}s")
            time.sleep(0.1)
        self.started_in = time.monotonic() - began
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health, timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def transformers_serve(
    model: Path | str, log: Path, port: int | None = None, *options: str
) -> ServerProcess:
    """`transformers serve MODEL` on 127.0.0.1 (CPU, the model preloaded and pinned, more
    `options` such as --continuous-batching), not yet started."""
    command = [
        sys.executable,
        "-c",
        "from transformers.cli.transformers import main; main()",
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port or free_port()),
        "--device",
        "cpu",
        *options,
    ]
    return ServerProcess(command, int(command[command.index("--port") + 1]), log)


def vllm_serve(model: Path | str, log: Path, *options: str) -> ServerProcess:
    """vLLM's OpenAI-compatible server (what `vllm serve MODEL` runs) on 127.0.0.1 from this
    Python's environment, with `options` such as --dtype, not yet started. Started as a module:
    the `vllm` command of the community CPU build looks its own version up under the name
    "vllm" and fails."""
    port = free_port()
    server = "vllm.entrypoints.openai.api_server"
    command = [sys.executable, "-m", server, "--model", str(model), *options]
    return ServerProcess([*command, "--host", "127.0.0.1", "--port", str(port)], port, log)


@dataclass
class Seen:
    """One request the proxy got: when, what it did, the body's prompt, seed and n, and how
    many times before it had seen the same (prompt, seed, n)."""

    at: float
    action: str
    prompt: str | None
    seed: int | None
    n: int | None
    repeat: int


@dataclass
class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream`, one request per connection.
    `script(seen)` picks what to do with a completions request: "pass", "429" (with
    Retry-After: `retry_after`), "500", "slow" (wait `slow_seconds`, then pass) or "drop"
    (close the connection without answering). With `api_key`, requests without that bearer key
    get 401. Runs its own event loop in a thread."""

    upstream: str
    script: Callable[[Seen], str] = lambda seen: "pass"
    retry_after: int = 1
    slow_seconds: float = 6.0
    api_key: str | None = None
    seen: list[Seen] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        host, _, port = self.upstream.removeprefix("http://").partition(":")
        self.upstream_address = (host, int(port))
        self.counts: dict[tuple, int] = {}
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            await self.server.serve_forever()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(serve())
            except asyncio.CancelledError:
                pass

        self.thread = threading.Thread(target=run, daemon=True, name="fault-proxy")
        self.thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        def shutdown() -> None:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(10)

    def actions(self) -> list[str]:
        return [s.action for s in self.seen]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            self.headers.append(headers)
            if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
                await self.answer(writer, 401, {"error": {"message": "Invalid API key."}})
                return
            action = "pass"
            if method == "POST" and path.endswith("/completions"):
                request = json.loads(body)
                key = (request.get("prompt"), request.get("seed"), request.get("n"))
                repeat = self.counts.get(key, 0)
                self.counts[key] = repeat + 1
                seen = Seen(time.monotonic(), "pass", *key, repeat)
                action = seen.action = self.script(seen)
                self.seen.append(seen)
            if action == "429":
                extra = {"Retry-After": str(self.retry_after)}
                await self.answer(writer, 429, {"error": {"message": "slow down"}}, extra)
            elif action == "500":
                await self.answer(writer, 500, {"error": {"message": "injected failure"}})
            elif action == "drop":
                writer.transport.abort()
            else:
                if action == "slow":
                    await asyncio.sleep(self.slow_seconds)
                await self.forward(writer, method, path, headers, body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def forward(self, writer, method: str, path: str, headers: dict, body: bytes) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream_address)
        except OSError:
            writer.transport.abort()  # the server is down: so is the proxy, for this request
            return
        sent = {k: v for k, v in headers.items() if k not in ("connection", "host")}
        sent |= {"host": f"{self.upstream_address[0]}:{self.upstream_address[1]}"}
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
        up_writer.write((head + "connection: close\r\n\r\n").encode("latin-1") + body)
        await up_writer.drain()
        answer = await up_reader.read()
        up_writer.close()
        if not answer:
            writer.transport.abort()
            return
        writer.write(answer)
        await writer.drain()

    @staticmethod
    async def answer(writer, status: int, payload: dict, extra: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        reason = {401: "Unauthorized", 429: "Too Many Requests", 500: "Internal Server Error"}
        head = [f"HTTP/1.1 {status} {reason[status]}", "content-type: application/json"]
        head += [f"content-length: {len(body)}", "connection: close"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()


def llama_cpp_serve(gguf: Path | str, log: Path, port: int | None = None) -> ServerProcess:
    """llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on 127.0.0.1
    for one GGUF file, not yet started; it is ready when /v1/models answers."""
    port = port or free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    return ServerProcess(command, port, log, health="/v1/models")


CONVERT_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_to_gguf.py"


def convert_to_gguf(model_dir: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    """scripts/convert_to_gguf.py run on `model_dir`, writing `out`."""
    command = [sys.executable, str(CONVERT_SCRIPT), str(model_dir), str(out), *options]
    return subprocess.run(command, capture_output=True, text=True)


VLLM_ARGS = {
    "dtype": "float32",
    "max_model_len": 1024,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.5,  # on vLLM's CPU backend: the share of RAM it may take
    "kv_cache_memory_bytes": 1 << 28,  # ... unless the cache size is given (the tiny model's)
}
"""What `vllm.LLM` gets in the tests, and `--engine-arg` in the command line tests."""
VLLM_SERVE_OPTIONS = (
    "--dtype=float32",
    "--max-model-len=1024",
    "--enforce-eager",
    f"--kv-cache-memory-bytes={1 << 28}",  # on the CPU backend, else a share of all RAM
    "--no-enable-chunked-prefill",  # its CPU sampler cannot rewind a seeded partial prefill
)
"""What `vllm serve` gets in the tests."""
