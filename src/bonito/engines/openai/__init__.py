"""A generator behind an OpenAI-compatible server (vLLM, llama.cpp's llama-server, TGI, Ollama,
`transformers serve`): the raw bonito prompt to the legacy `/v1/completions` endpoint, never a
chat template (it would change the text the generator was trained on), many requests in flight,
retries with backoff, and a concurrency that halves when the server pushes back and grows again
after."""

from bonito.engines.openai.answers import completions_from, split_tokens
from bonito.engines.openai.concurrency import Concurrency, Stats
from bonito.engines.openai.engine import PROBE_PROMPT, OpenAIEngine
from bonito.engines.openai.http import (
    MAX_ANSWER_BYTES,
    Answer,
    api_root,
    env_proxy,
    error_message,
    is_local,
    retry_after,
    to_json,
)

__all__ = [
    "MAX_ANSWER_BYTES",
    "PROBE_PROMPT",
    "Answer",
    "Concurrency",
    "OpenAIEngine",
    "Stats",
    "api_root",
    "completions_from",
    "env_proxy",
    "error_message",
    "is_local",
    "retry_after",
    "split_tokens",
    "to_json",
]
