"""The openai engine's own cost: the same requests sent at the same concurrency by the engine
and by the thinnest client we can write (hand-made HTTP/1.1 on asyncio streams, no retries, no
threads), against `transformers serve` on 127.0.0.1 (the tiny generator, continuous batching)
and against a stub server that answers at once. Target: the engine's own time per request
stays under 5% of the request's end-to-end time at concurrency 16.

    python bench/http_engine.py [--requests 96] [--concurrency 16] [--max-tokens 64]
                                [--rounds 7] [--model models/tiny-bonito] [--out FILE]

Rounds alternate thin client and engine (medians over rounds). "latency" is the engine's mean
time from sending a request to holding its parsed answer (end to end); "client cpu ms" is the
CPU the engine's process spends per request, which is the client's own time (the rest of the
latency is waiting on the server); "share" is client cpu ms over latency. Against the stub
nearly all time is the client's, so its req/s is the engine's ceiling. The wall times compare
whole runs: the best round of each ("overhead"; other work on a shared machine only adds time)
and the median of each round's pair ("paired"); on a busy machine they swing with the server's
speed. Prints a table and writes bench/results/http_engine.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
from servers import ServerProcess, free_port, transformers_serve  # noqa: E402

from bonito import SamplingParams, build_prompt  # noqa: E402
from bonito.engines.openai import OpenAIEngine  # noqa: E402
from bonito.read.sources import Document, read_documents  # noqa: E402

TASK_TYPES = ("ynqa", "exqa", "nli", "mcqa", "summarization", "qa")
STUB_ANSWER = {
    "id": "stub",
    "object": "text_completion",
    "model": "stub",
    "choices": [
        {"index": 0, "text": "{{context}}\nIs it so?\n<|pipe|>\nYes", "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112},
}


async def stub_server(port: int) -> None:
    """An OpenAI-compatible server that answers every completions request at once."""
    body = json.dumps(STUB_ANSWER).encode()
    models = json.dumps({"object": "list", "data": [{"id": "stub"}]}).encode()

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                payload = models if head.startswith(b"GET") else body
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


async def thin_client(port: int, bodies: list[dict], concurrency: int) -> tuple[list, float]:
    """The same requests, `concurrency` keep-alive connections, nothing else; the answers and
    the seconds from sending to answer, summed over requests."""
    todo: asyncio.Queue = asyncio.Queue()
    for i, body in enumerate(bodies):
        todo.put_nowait((i, body))
    answers: list = [None] * len(bodies)
    latency = 0.0

    async def worker():
        nonlocal latency
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not todo.empty():
            i, body = todo.get_nowait()
            sent = time.perf_counter()
            body = json.dumps(body).encode()
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"content-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in head.decode("latin-1").split("\r\n")
                if line.lower().startswith("content-length:")
            )
            answers[i] = json.loads(await reader.readexactly(length))
            latency += time.perf_counter() - sent
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers, latency


def prompts(count: int) -> list[str]:
    files = [ROOT / "examples" / "passages.jsonl"]
    texts = [d.text for d in read_documents(files) if isinstance(d, Document)]
    return [
        build_prompt(f"{i}. {texts[i % len(texts)]}", TASK_TYPES[i % len(TASK_TYPES)])
        for i in range(count)
    ]


def measure(engine: OpenAIEngine, port: int, texts: list[str], sampling, rounds: int) -> dict:
    """Wall seconds, client CPU seconds and mean seconds from sending a request to its answer,
    of the thin client and of the engine, in alternating rounds."""
    bodies = [engine._body(t, sampling, i, 1) for i, t in enumerate(texts)]
    runs: dict[str, list[tuple[float, float, float]]] = {"thin": [], "engine": []}
    tokens, n = 0, len(texts)
    for _ in range(rounds):
        for kind in ("thin", "engine"):
            wall, cpu = time.perf_counter(), time.process_time()
            if kind == "thin":
                answers, latency = asyncio.run(thin_client(port, bodies, engine.concurrency))
                assert all(a and a["choices"] for a in answers)
            else:
                before = engine.stats.seconds
                done = [c for group in engine.generate(texts, sampling) for c in group]
                assert len(done) == n and engine.stats.failed == 0
                tokens = sum(c[0].completion_tokens for _, c in done)
                latency = engine.stats.seconds - before
            runs[kind].append((time.perf_counter() - wall, time.process_time() - cpu, latency / n))
    # Other work on a shared machine only ever adds time: the best round of each is the least
    # disturbed; "paired" is the median over rounds of each round's engine-thin gap.
    thin, mine = min(r[0] for r in runs["thin"]), min(r[0] for r in runs["engine"])
    pairs = list(zip(runs["thin"], runs["engine"], strict=True))
    engine_latency = statistics.median(e[2] for _, e in pairs)
    engine_cpu = statistics.median(e[1] for _, e in pairs) / n
    return {
        "requests": n,
        "thin_client_s": round(thin, 3),
        "engine_s": round(mine, 3),
        "overhead_share": round((mine - thin) / mine, 4),
        "overhead_share_paired_median": round(
            statistics.median((e[0] - t[0]) / e[0] for t, e in pairs), 4
        ),
        "engine_requests_per_s": round(n / mine, 1),
        "engine_output_tokens_per_s": round(tokens / mine, 1),
        "thin_client_cpu_ms_per_request": round(
            1000 * statistics.median(r[1] for r in runs["thin"]) / n, 3
        ),
        "engine_cpu_ms_per_request": round(1000 * engine_cpu, 3),
        "engine_latency_ms": round(1000 * engine_latency, 2),
        "client_share_of_latency": round(engine_cpu / engine_latency, 4),
        "rounds": {
            k: [[round(w, 3), round(c, 3), round(1000 * lat, 2)] for w, c, lat in v]
            for k, v in runs.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--stub-requests", type=int, default=4000)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-bonito"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_engine.json")
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)  # run as the stub server
    args = parser.parse_args()
    if args.stub:
        asyncio.run(stub_server(args.stub))
        return
    if not (Path(args.model) / "config.json").exists():
        from bonito.train.tiny_model import build_tiny_model

        build_tiny_model(args.model)
    sampling = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = transformers_serve(
            args.model, Path(tmp) / "serve.log", None, "--continuous-batching"
        ).start()
        try:
            engine = OpenAIEngine(
                args.model, base_url=server.url, concurrency=args.concurrency, timeout=300
            )
            warm = prompts(args.concurrency)
            list(engine.generate(warm, sampling))  # the first batch sets up the KV cache
            rows["transformers serve"] = measure(
                engine, server.port, prompts(args.requests), sampling, args.rounds
            )
            rows["transformers serve"]["server_started_in_s"] = round(server.started_in, 1)
        finally:
            server.stop()
        port = free_port()
        stub = ServerProcess(
            [sys.executable, __file__, "--stub", str(port)],
            port,
            Path(tmp) / "stub.log",
            health="/v1/models",
        ).start()
        try:
            engine = OpenAIEngine("stub", base_url=stub.url, concurrency=args.concurrency)
            rows["stub (answers at once)"] = measure(
                engine, port, prompts(args.stub_requests), sampling, args.rounds
            )
        finally:
            stub.stop()
    print(
        f"{'server':<24}{'requests':>9}{'req/s':>8}{'tok/s':>9}{'latency ms':>11}"
        f"{'client cpu ms':>14}{'share':>7}{'thin cpu ms':>12}"
        f"{'thin s':>8}{'engine s':>9}{'overhead':>9}{'paired':>8}"
    )
    for name, row in rows.items():
        print(
            f"{name:<24}{row['requests']:>9}{row['engine_requests_per_s']:>8}"
            f"{row['engine_output_tokens_per_s']:>9}{row['engine_latency_ms']:>11}"
            f"{row['engine_cpu_ms_per_request']:>14}{row['client_share_of_latency']:>7.1%}"
            f"{row['thin_client_cpu_ms_per_request']:>12}{row['thin_client_s']:>8}"
            f"{row['engine_s']:>9}{row['overhead_share']:>9.1%}"
            f"{row['overhead_share_paired_median']:>8.1%}"
        )
    result = {
        "benchmark": "http_engine",
        "cpu": platform.processor() or platform.machine(),
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "server": "transformers serve --continuous-batching --device cpu, tiny generator",
        "http_client": f"aiohttp {aiohttp.__version__}",
        "rows": rows,
        "target_client_share_of_latency": 0.05,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
