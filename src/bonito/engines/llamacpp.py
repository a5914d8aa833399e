"""In-process generation with llama.cpp (through llama-cpp-python) from one GGUF file: up to
`n_parallel` sequences decoded together in one KV cache, the n samples of a prompt sharing its
prompt's cache entries, tokens picked as the transformers engine picks them."""

from __future__ import annotations

import ctypes
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bonito.engines.base import (
    Completion,
    Failure,
    Finished,
    cut_at_stop,
    engine_choice,
    prompt_seeds,
)
from bonito.engines.sampling import pick_tokens
from bonito.errors import BonitoError
from bonito.prompt.sampling import SamplingParams, derive_seed

DEFAULT_PARALLEL = 32
"""Sequences decoded together (llama.cpp's parallel slots): one decode call moves them all a
token on, which costs little more than moving one."""
DEFAULT_CTX = 4096
"""KV cache cells shared by every sequence in flight; a prompt starts when its prompt and n
samples of up to max_tokens fit in what is left. Attention reads the cells in use, so a bigger
cache is slower per token on CPU (bench/llamacpp.py: 8192 cost the tiny model a quarter of its
speed); raise it for long prompts with many samples, or on a GPU."""
INSTALL = "pip install 'bonito[llamacpp]'"
CONVERT = (
    "convert a Hugging Face folder with `python scripts/convert_to_gguf.py MODEL_DIR OUT.gguf` "
    "(Llama/Mistral, such as `bonito tiny-model`'s) or llama.cpp's convert_hf_to_gguf.py"
)
OPTIONS = (
    "n_ctx",
    "n_parallel",
    "n_batch",
    "n_threads",
    "n_gpu_layers",
    "cache_type",
    "flash_attn",
    "verbose",
)
CACHE_TYPES = {"f32": 0, "f16": 1}
"""KV cache element types (ggml type ids) this engine offers."""


def default_threads() -> int:
    """The cores this process may run on (the machine's, unless it is pinned to fewer)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_gguf_path(model: str) -> Path:
    """The path of an existing GGUF file, else one sentence saying what was given instead."""
    path = Path(model).expanduser()
    if path.is_dir():
        raise BonitoError(
            f"'{model}' is a folder, but the llamacpp engine takes one .gguf file; pass the file, "
            f"or {CONVERT}."
        )
    if not path.is_file():
        raise BonitoError(
            f"The model file '{model}' does not exist; the llamacpp engine takes a local .gguf "
            f"file (download one, or {CONVERT})."
        )
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise BonitoError(
                f"'{model}' is not a GGUF file; the llamacpp engine takes a .gguf file ({CONVERT})."
            )
    return path


@dataclass
class _Sample:
    """One sequence being decoded: sample k of prompt `index` in KV sequence `slot`."""

    index: int
    k: int
    slot: int
    seed: int
    budget: int
    position: int
    tokens: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)


@dataclass
class _Group:
    """The n samples of one prompt and the KV cells reserved for them."""

    prompt_tokens: int
    cells: int
    completions: list[Completion | None]


class LlamaCppEngine:
    """A GGUF model run by llama.cpp on the CPU (or a GPU with a CUDA/Metal build and
    n_gpu_layers). Options: n_ctx (KV cache cells for all sequences in flight), n_parallel
    (sequences decoded together), n_batch (prompt tokens per decode call), n_threads (default:
    the machine's cores), n_gpu_layers, verbose (llama.cpp's own log)."""

    name = "llamacpp"

    def __init__(
        self,
        model: str,
        *,
        n_ctx: int | None = None,
        n_parallel: int = DEFAULT_PARALLEL,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        cache_type: str = "f16",
        flash_attn: bool | None = None,
        verbose: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise BonitoError(
                f"The llamacpp engine does not take {', '.join(sorted(unknown))}; it takes "
                f"{', '.join(OPTIONS)}."
            )
        try:
            import llama_cpp
        except ImportError as error:
            raise BonitoError(
                f"The llamacpp engine needs llama-cpp-python, which is not installed: `{INSTALL}` "
                f"(it builds llama.cpp, a few minutes), or use {engine_choice('transformers')}."
            ) from error
        if cache_type not in CACHE_TYPES:
            raise BonitoError(f"cache_type must be f32 or f16, got {cache_type!r}.")
        for name, value in (
            ("n_parallel", n_parallel),
            ("n_batch", n_batch),
            ("n_threads", n_threads),
        ):
            if value is not None and value < 1:
                raise BonitoError(f"{name} must be at least 1, got {value}.")
        path = check_gguf_path(model)
        self.model = model
        self._lib = lib = llama_cpp
        self._model = self._context = None
        self._batch = None
        # llama-cpp-python forwards llama.cpp's log to this logger, warnings mapped to ERROR.
        logging.getLogger("llama-cpp-python").setLevel(
            logging.DEBUG if verbose else logging.CRITICAL
        )
        lib.llama_backend_init()

        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self._model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise BonitoError(
                f"llama.cpp could not load '{model}' (an architecture or format this "
                "llama-cpp-python does not know, or a damaged file); pass verbose=True to see "
                "its log."
            )
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.n_parallel = min(n_parallel, lib.llama_max_parallel_sequences())
        self.n_ctx = n_ctx or DEFAULT_CTX
        self.max_length = min(self.n_ctx, lib.llama_model_n_ctx_train(self._model) or self.n_ctx)
        """The longest sequence (prompt and completion) one sample may reach."""
        self.n_batch = max(n_batch, self.n_parallel)
        self.n_threads = n_threads or default_threads()

        context = lib.llama_context_default_params()
        context.n_ctx = self.n_ctx
        context.n_batch = context.n_ubatch = self.n_batch
        context.n_seq_max = self.n_parallel
        context.kv_unified = True  # one pool of cells: a prompt's samples share its cells
        context.n_threads = context.n_threads_batch = self.n_threads
        context.no_perf = True
        context.type_k = context.type_v = CACHE_TYPES[cache_type]
        if flash_attn is not None:
            context.flash_attn_type = int(flash_attn)
        self._context = lib.llama_init_from_model(self._model, context)
        if not self._context:
            self.close()
            raise BonitoError(
                f"llama.cpp could not make a context of {self.n_ctx} tokens for '{model}' "
                "(out of memory?); try a smaller n_ctx."
            )
        self._memory = lib.llama_get_memory(self._context)
        self._batch = lib.llama_batch_init(self.n_batch, 0, self.n_parallel)
        self._views = _BatchViews(self._batch, self.n_batch, self.n_parallel)
        self._bos = lib.llama_vocab_bos(self._vocab)
        self._add_bos = lib.llama_vocab_get_add_bos(self._vocab)
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        """Free the model, its context and cache (also done when the engine is collected)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_context", None):
            lib.llama_free(self._context)
            self._context = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter shutdown llama_cpp may be gone already
            pass

    def encode(self, prompt: str) -> list[int]:
        """Token ids as the Hugging Face tokenizer gives them: BOS when the model's tokenizer adds
        it (never twice), special tokens written in the text read as such."""
        text = prompt.encode("utf-8")
        size = len(text) + 2
        while True:
            buffer = (self._lib.llama_token * size)()
            count = self._lib.llama_tokenize(
                self._vocab, text, len(text), buffer, size, self._add_bos, True
            )
            if count >= 0:
                break
            size = -count
        ids = buffer[:count]
        if self._add_bos and ids[:2] == [self._bos, self._bos]:
            ids = ids[1:]
        return ids

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (nothing for control tokens such as EOS)."""
        cached = self._pieces.get(token)
        if cached is None:
            buffer = ctypes.create_string_buffer(64)
            size = self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = self._lib.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
            cached = self._pieces[token] = buffer.raw[:size]
        return cached

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]:
        """Prompts start in order as slots and cache cells free up; each prompt's group is
        yielded the step its last sample ends. Sample k of a prompt draws with
        derive_seed(prompt seed, k), as in the transformers engine."""
        seeds = prompt_seeds(sampling, len(prompts), seeds)
        n = sampling.n
        if n > self.n_parallel:
            raise BonitoError(
                f"n={n} samples per prompt need n_parallel of at least {n} (it is "
                f"{self.n_parallel})."
            )
        waiting: deque[tuple[int, list[int]]] = deque()
        failed: Finished = []
        for index, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            reason = self._refusal(ids, sampling)
            if reason:
                failed.append((index, Failure(reason)))
            else:
                waiting.append((index, ids))
        if failed:
            yield failed
        self._lib.llama_memory_clear(self._memory, True)
        free_slots = list(range(self.n_parallel - 1, -1, -1))
        groups: dict[int, _Group] = {}
        live: list[_Sample] = []
        cells = 0
        while waiting or live:
            starting = []
            while waiting and len(free_slots) >= n:
                index, ids = waiting[0]
                need = self._cells(len(ids), sampling)
                if cells + need > self.n_ctx:
                    break
                waiting.popleft()
                cells += need
                groups[index] = _Group(len(ids), need, [None] * n)
                slots = [free_slots.pop() for _ in range(n)]
                starting.append((index, ids, slots))
            if starting:
                live += self._start(starting, seeds, sampling)
            else:
                live = self._step(live, sampling)
            done: Finished = []
            still = []
            for sample in live:
                if not self._ended(sample, sampling):
                    still.append(sample)
                    continue
                group = groups[sample.index]
                group.completions[sample.k] = self._completion(sample, group, sampling)
                self._lib.llama_memory_seq_rm(self._memory, sample.slot, -1, -1)
                free_slots.append(sample.slot)
                if all(c is not None for c in group.completions):
                    done.append((sample.index, [c for c in group.completions if c is not None]))
                    cells -= group.cells
                    del groups[sample.index]
            live = still
            if done:
                yield done

    def _refusal(self, ids: list[int], sampling: SamplingParams) -> str | None:
        """Why a prompt cannot run at all, if it cannot."""
        if len(ids) >= self.max_length:
            return (
                f"The prompt has {len(ids)} tokens; this engine runs sequences of at most "
                f"{self.max_length} (the model's context or n_ctx), so shorten the context."
            )
        need = self._cells(len(ids), sampling)
        if need > self.n_ctx:
            return (
                f"The prompt ({len(ids)} tokens) and {sampling.n} samples of up to "
                f"{sampling.max_tokens} tokens need {need} KV cache cells and n_ctx is "
                f"{self.n_ctx}; raise n_ctx."
            )
        return None

    def _cells(self, prompt_tokens: int, sampling: SamplingParams) -> int:
        return prompt_tokens + sampling.n * self._budget(prompt_tokens, sampling)

    def _budget(self, prompt_tokens: int, sampling: SamplingParams) -> int:
        return min(sampling.max_tokens, self.max_length - prompt_tokens)

    def _decode(self, count: int) -> np.ndarray:
        """Run the first `count` batch entries; the logits of those that asked for them."""
        assert self._batch is not None  # allocated with the context
        self._batch.n_tokens = count
        code = self._lib.llama_decode(self._context, self._batch)
        if code != 0:
            raise BonitoError(
                f"llama.cpp failed to decode a batch (code {code}); if it ran out of KV cache "
                f"room, raise n_ctx (now {self.n_ctx})."
            )
        outputs = int(self._views.logits[:count].sum())
        if not outputs:  # a long prompt's first part: nothing to read yet
            return np.empty((0, self.n_vocab), dtype=np.float32)
        logits = np.ctypeslib.as_array(
            self._lib.llama_get_logits(self._context), shape=(outputs * self.n_vocab,)
        )
        return logits.reshape(outputs, self.n_vocab).copy()

    def _start(
        self,
        starting: list[tuple[int, list[int], list[int]]],
        seeds: list[int],
        sampling: SamplingParams,
    ) -> list[_Sample]:
        """Read the new prompts in as few decode calls as fit n_batch, each prompt token in the
        cache sequences of all its samples, and pick every sample's first token."""
        views, started = self._views, []
        queue = deque((index, ids, slots, 0) for index, ids, slots in starting)
        while queue:
            count, finishing = 0, []
            while queue and count < self.n_batch:
                index, ids, slots, offset = queue.popleft()
                take = min(len(ids) - offset, self.n_batch - count)
                for position in range(offset, offset + take):
                    views.put(count, ids[position], position, slots, False)
                    count += 1
                if offset + take < len(ids):
                    queue.appendleft((index, ids, slots, offset + take))
                    break
                views.logits[count - 1] = 1
                finishing.append((index, ids, slots))
            logits = self._decode(count)
            rows, samples = [], []
            for row, (index, ids, slots) in enumerate(finishing):
                for k, slot in enumerate(slots):
                    seed = derive_seed(seeds[index], k)
                    budget = self._budget(len(ids), sampling)
                    samples.append(_Sample(index, k, slot, seed, budget, len(ids)))
                    rows.append(row)
            if samples:
                self._pick(samples, logits[rows], sampling)
            started += samples
        return started

    def _step(self, live: list[_Sample], sampling: SamplingParams) -> list[_Sample]:
        """Feed every live sample its last token and pick its next one."""
        for row, sample in enumerate(live):
            self._views.put(row, sample.tokens[-1], sample.position, (sample.slot,), True)
            sample.position += 1
        self._pick(live, self._decode(len(live)), sampling)
        return live

    def _pick(self, samples: list[_Sample], logits: np.ndarray, sampling: SamplingParams) -> None:
        seeds = torch.tensor([s.seed for s in samples], dtype=torch.int64)
        steps = torch.tensor([[len(s.tokens)] for s in samples], dtype=torch.int64)
        # One torch thread: these tensors are small, and more threads would fight llama.cpp's.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # A column of per-row steps broadcasts where race_noise takes one step for all.
            chosen = pick_tokens(torch.from_numpy(logits), sampling, seeds, steps)  # type: ignore[arg-type]
        finally:
            torch.set_num_threads(threads)
        for sample, token in zip(samples, chosen.tolist(), strict=True):
            sample.tokens.append(token)
            sample.text += self.piece(token)

    def _ended(self, sample: _Sample, sampling: SamplingParams) -> bool:
        """End of generation, a stop string in the text so far, or the token budget spent."""
        if self._lib.llama_vocab_is_eog(self._vocab, sample.tokens[-1]):
            return True
        if len(sample.tokens) >= sample.budget:
            return True
        if sampling.stop:
            text = sample.text.decode("utf-8", errors="ignore")
            return any(stop in text for stop in sampling.stop)
        return False

    def _completion(self, sample: _Sample, group: _Group, sampling: SamplingParams) -> Completion:
        """The text before end of sequence or the first stop string (excluded, as vLLM does)."""
        eog = bool(self._lib.llama_vocab_is_eog(self._vocab, sample.tokens[-1]))
        cut_short = len(sample.tokens) >= sample.budget and not eog
        text = sample.text.decode("utf-8", errors="replace")
        text, stopped = cut_at_stop(text, sampling.stop)
        cut_short = cut_short and not stopped
        return Completion(
            text, "length" if cut_short else "stop", group.prompt_tokens, len(sample.tokens)
        )


class _BatchViews:
    """numpy views over a llama_batch's arrays, so that filling it costs little Python."""

    def __init__(self, batch: Any, capacity: int, n_seq_max: int) -> None:
        self.token = np.ctypeslib.as_array(batch.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(batch.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(batch.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(batch.logits, shape=(capacity,))
        self.seq_id = [
            np.ctypeslib.as_array(batch.seq_id[i], shape=(n_seq_max,)) for i in range(capacity)
        ]

    def put(self, i: int, token: int, position: int, slots: Sequence[int], logits: bool) -> None:
        self.token[i] = token
        self.pos[i] = position
        self.n_seq_id[i] = len(slots)
        self.seq_id[i][: len(slots)] = slots
        self.logits[i] = logits
