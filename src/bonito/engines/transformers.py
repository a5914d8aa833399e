"""In-process generation with transformers on CPU or CUDA: n samples per prompt, stop strings,
seeded sampling, through one of two decoders.

- "dynamic" (the default on CPU): length-sorted, memory-sized, left-padded batches with a growing
  cache, each row dropped the step it ends.
- the slot decoders (the default on CUDA): a fixed number of sequences ("slots") over a cache
  allocated once; a slot whose sample ended takes the next prompt; each decode step has fixed
  shapes, so on CUDA it is captured once as a CUDA graph and replayed (no per-kernel launch cost),
  optionally compiled first with torch.compile; sampling stays on the device and the host looks
  at the tokens every few steps. "static" runs the same steps eagerly (CPU too), "graphs" replays
  them, "compiled" compiles them (and replays them on CUDA)."""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bonito.engines.base import Completion, Finished, prompt_seeds
from bonito.errors import BonitoError
from bonito.models import (
    cache_keyword,
    check_dtype,
    config_window,
    load_causal_lm,
    resolve_device,
)
from bonito.prompt.sampling import SamplingParams, derive_seed

log = logging.getLogger("bonito")

CPU_TOKEN_BUDGET = 16_384
"""On CPU, compute not memory is the limit: at most this many (prompt + new) tokens per batch
(bench/batching.py on 2 cores: 16k beat 8k and 32k)."""

DECODERS = ("auto", "dynamic", "static", "graphs", "compiled")
SLOT_MODEL_TYPES = frozenset({"llama", "mistral"})
"""Architectures whose attention layers call the cache and the attention function the way the
slot decoders rely on."""
MAX_SLOTS = 512
"""At 512 sequences a Mistral-7B decode step on an H200 should already cost as much compute as
memory traffic (predicted in bench/results/NOTES.md); more would only cost memory."""
CUDA_MEMORY_SHARE = 0.8
"""Share of free accelerator memory the slot cache may take; the rest is for prefill activations,
sampling and the graph's own buffers."""
CHECK_EVERY = 8
"""Decode steps between two looks at the tokens (the only time the host waits for the device); a
sample that ended runs on for at most this many steps."""
PREFILL_TOKENS = 16_384
"""Prompt tokens per prefill forward: prompts are read in groups of about this size."""
LENGTH_BUCKET = 64
"""Cache lengths (longest prompt plus max_tokens) are rounded up to a multiple of this, so calls
with similar prompts share one cache and one captured graph."""

LOAD_OPTIONS = frozenset(
    {
        "revision",
        "trust_remote_code",
        "attn_implementation",
        "device_map",
        "token",
        "cache_dir",
        "low_cpu_mem_usage",
        "quantization_config",
        "local_files_only",
    }
)
"""from_pretrained options the engine passes on; anything else (a vLLM option, a typo) is refused
rather than silently stored on the model config."""


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding, and a pad token (end of sequence when the tokenizer has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: str,
    device: str | None,
    dtype: str | torch.dtype = "auto",
    adapter: str | None = None,
    **model_kwargs: Any,
):
    """Tokenizer and model through the normal from_pretrained path (an adapter merged in, see
    `load_causal_lm`), in eval mode on `device` (see `resolve_device`), set up for left
    padding."""
    device = resolve_device(device)
    check_dtype(dtype)
    if dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    lm, tokenizer = load_causal_lm(model, adapter, dtype=dtype, **model_kwargs)
    return prepare_tokenizer(tokenizer), lm.to(device).eval()


def kv_shape(config: Any) -> tuple[int, int, int]:
    """Layers, key/value heads and head size of a decoder's attention."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return config.num_hidden_layers, kv_heads, head_dim


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of key/value cache one token takes across all layers."""
    layers, kv_heads, head_dim = kv_shape(config)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def check_options(batch_size: int | None, decoder: str) -> None:
    """Refuse a batch size below 1 or an unknown decoder, before anything is loaded."""
    if batch_size is not None and batch_size < 1:
        raise BonitoError(f"batch_size must be at least 1, got {batch_size}.")
    if decoder not in DECODERS:
        raise BonitoError(f"Unknown decoder '{decoder}'; choose one of {', '.join(DECODERS)}.")


def choose_decoder(decoder: str, device: str, config: Any) -> str:
    """Resolve "auto" (graphs on CUDA for the unquantized architectures the slot decoders
    know, else dynamic) and refuse a decoder the device or the model cannot run."""
    quantized = getattr(config, "quantization_config", None) is not None
    supported = config.model_type in SLOT_MODEL_TYPES and not quantized
    cuda = device.startswith("cuda")
    if decoder == "auto":
        return "graphs" if cuda and supported else "dynamic"
    if decoder != "dynamic" and not supported:
        kind = f"quantized {config.model_type}" if quantized else config.model_type
        raise BonitoError(
            f"decoder='{decoder}' runs unquantized Llama and Mistral models, not {kind}; use "
            "decoder='dynamic'."
        )
    if decoder == "graphs" and not cuda:
        raise BonitoError("decoder='graphs' needs a CUDA device; use decoder='static' on CPU.")
    return decoder


class PhaseTimes:
    """Seconds spent in each phase of generation (prefill, decode, sampling, startup), for
    benchmarks. On CUDA a phase is timed by two events on the device's stream: the device's
    time, measured without making the host wait (a synchronize after each phase would
    serialize host and device, the overlap the slot decoders rely on); reading `seconds` waits
    for the device once."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device) if device.startswith("cuda") else None
        self.host: dict[str, float] = {}
        self.events: list[tuple[str, Any, Any]] = []

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.cuda is None:
            started = time.perf_counter()
            yield
            self.host[phase] = self.host.get(phase, 0.0) + time.perf_counter() - started
            return
        stream = torch.cuda.current_stream(self.cuda)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        yield
        end.record(stream)
        self.events.append((phase, start, end))

    @property
    def seconds(self) -> dict[str, float]:
        totals = dict(self.host)
        if self.events:
            torch.cuda.synchronize(self.cuda)
        for phase, start, end in self.events:
            totals[phase] = totals.get(phase, 0.0) + start.elapsed_time(end) / 1000
        return totals


class TransformersEngine:
    """A model loaded with transformers, generating with the decoder chosen at construction:
    "auto" (graphs on CUDA, dynamic on CPU), "dynamic", "static", "graphs" or "compiled" (see the
    module's docstring). `batch_size` caps the prompts decoded at once (each with its n samples);
    by default memory decides."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | torch.dtype = "auto",
        batch_size: int | None = None,
        decoder: str = "auto",
        **model_kwargs: Any,
    ) -> None:
        check_options(batch_size, decoder)
        unknown = sorted(set(model_kwargs) - LOAD_OPTIONS)
        if unknown:
            raise BonitoError(
                f"The transformers engine does not take {', '.join(unknown)} (vLLM options go "
                f"with engine='vllm'); it takes device, dtype, batch_size, decoder and "
                f"{', '.join(sorted(LOAD_OPTIONS))}."
            )
        tokenizer, lm = load_model(model, device, dtype, **model_kwargs)
        self._setup(model, tokenizer, lm, batch_size, decoder)

    @classmethod
    def from_model(
        cls,
        lm: Any,
        tokenizer: Any,
        *,
        name: str = "in-memory",
        batch_size: int | None = None,
        decoder: str = "auto",
    ) -> TransformersEngine:
        """An engine over a model already loaded (on its device), such as one just trained."""
        check_options(batch_size, decoder)
        engine = cls.__new__(cls)
        engine._setup(name, prepare_tokenizer(tokenizer), lm.eval(), batch_size, decoder)
        return engine

    def _setup(self, model: str, tokenizer: Any, lm: Any, batch_size: int | None, decoder: str):
        self.model = model
        self.tokenizer, self.lm = tokenizer, lm
        self.device = str(lm.device)
        self.batch_size = batch_size
        self.decoder = choose_decoder(decoder, self.device, lm.config)
        self.automatic = decoder == "auto"
        self.attention = lm.config._attn_implementation  # the one to go back to
        if self.attention == GROUPED_SDPA:  # the model served a slot decoder before
            self.attention = "sdpa"
        if self.decoder != "dynamic":
            lm.set_attn_implementation(GROUPED_SDPA)
        eos = lm.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos) if isinstance(eos, list) else {eos}
        self.cache_keyword = cache_keyword(lm)
        self.phases: PhaseTimes | None = None
        self.slots: Slots | None = None

    def drop_slots(self) -> None:
        """Let the slots go, and their memory back to the device (not only to PyTorch's cache,
        which the memory-sized batches of the dynamic decoder would not count as free)."""
        self.slots = None
        gc.collect()
        torch.cuda.empty_cache()  # nothing without CUDA

    def fall_back(self, failure: str) -> None:
        """Leave the slot decoder chosen by "auto" for the dynamic one, for good, after it failed
        before producing anything (the samples are the same either way, only slower)."""
        log.warning(
            "The %s decoder failed (%s); its memory freed, generating with the dynamic decoder "
            "instead.",
            self.decoder,
            failure,
        )
        self.decoder = "dynamic"
        self.drop_slots()
        self.lm.set_attn_implementation(self.attention)

    def timed(self, phase: str):
        """A context that adds its time to `phase` when `phases` is set (benchmarks)."""
        return nullcontext() if self.phases is None else self.phases(phase)

    def encode(self, prompt: str) -> list[int]:
        """Token ids as vLLM sends them: the tokenizer's special tokens (BOS), never BOS twice."""
        ids = self.tokenizer(prompt).input_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids[:2] == [bos, bos]:
            ids = ids[1:]
        return ids

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]:
        encoded = [self.encode(p) for p in prompts]
        seeds = prompt_seeds(sampling, len(prompts), seeds)
        self.check_window(encoded, sampling)
        if self.decoder != "dynamic":
            started, failure = False, None
            try:
                for finished in self.generate_in_slots(encoded, seeds, sampling):
                    started = True
                    yield finished
                return
            except Exception as error:
                if started or not self.automatic:
                    raise
                first = str(error).strip().splitlines()[:1]
                failure = ": ".join([type(error).__name__, *first])
            # out of the except block, so that the error's frames no longer hold the slots
            self.fall_back(failure)
        for batch in self.batches(encoded, sampling):
            completions = self.generate_batch(encoded, seeds, batch, sampling)
            yield list(zip(batch, completions, strict=True))

    def check_window(self, encoded: list[list[int]], sampling: SamplingParams) -> None:
        """BonitoError if the longest prompt and max_tokens go past the model's window."""
        window = config_window(self.lm.config)
        longest = max(map(len, encoded), default=0)
        if window is not None and longest + sampling.max_tokens > window:
            raise BonitoError(
                f"A prompt of {longest} tokens and max_tokens {sampling.max_tokens} do not fit "
                f"the model's window of {window} tokens; shorten the passage or lower max_tokens."
            )

    def batches(self, encoded: list[list[int]], sampling: SamplingParams) -> list[list[int]]:
        """Prompt indices grouped longest first, each group as large as memory allows."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        budget = self.token_budget()
        groups: list[list[int]] = []
        for index in order:
            if groups and self.fits(groups[-1], encoded, sampling, budget):
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def fits(self, group: list[int], encoded, sampling: SamplingParams, budget: int) -> bool:
        if self.batch_size is not None:
            return len(group) < self.batch_size
        longest = len(encoded[group[0]])  # groups are filled longest first
        return (len(group) + 1) * sampling.n * (longest + sampling.max_tokens) <= budget

    def token_budget(self) -> int:
        """How many sequence tokens one batch may hold: free accelerator memory over the KV cache
        cost per token (with headroom for activations), or a fixed compute budget on CPU."""
        per_token = kv_bytes_per_token(self.lm.config, self.lm.dtype)
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return max(1, int(free * 0.6) // (per_token * 2))
        memory = psutil.virtual_memory().available * 0.5 // (per_token * 2)
        return max(1, int(min(CPU_TOKEN_BUDGET, memory)))

    @torch.inference_mode()
    def generate_batch(
        self, encoded: list[list[int]], seeds: list[int], batch: list[int], sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Decode one left-padded batch (n rows a prompt), dropping each row from the batch and
        its KV cache the step it ends, so finished samples cost nothing while others go on."""
        rows = [encoded[i] for i in batch for _ in range(sampling.n)]
        row_seeds = torch.tensor(
            [derive_seed(seeds[i], k) for i in batch for k in range(sampling.n)],
            device=self.device,
        )
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.lm.config)
        live = list(range(len(rows)))
        tokens: list[list[int]] = [[] for _ in rows]
        for step in range(sampling.max_tokens):
            with self.timed("decode" if step else "prefill"):
                logits = self.lm(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{self.cache_keyword: cache},
                    logits_to_keep=1,
                ).logits
            with self.timed("sampling"):
                chosen = pick_tokens(logits[:, -1].float(), sampling, row_seeds, step)
            keep = []
            for slot, (row, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
                tokens[row].append(token)
                if not self.ended(tokens[row], sampling):
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                chosen, mask, positions = chosen[index], mask[index], positions[index]
                row_seeds = row_seeds[index]
                live = [live[slot] for slot in keep]
            ids = chosen[:, None]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions = positions[:, -1:] + 1
        n = sampling.n
        return [
            [self.completion(tokens[row * n + k], len(encoded[i]), sampling) for k in range(n)]
            for row, i in enumerate(batch)
        ]

    @torch.inference_mode()
    def generate_in_slots(
        self, encoded: list[list[int]], seeds: list[int], sampling: SamplingParams
    ) -> Iterator[Finished]:
        """Decode every sample in slots, longest prompts first: each round of steps runs on the
        device without waiting, then the host looks for samples that ended, yields the prompts
        whose n samples are all done and gives the freed slots to the next prompts."""
        if not encoded:
            return
        work = SlotWork(encoded, seeds, sampling)
        slots = self.slots_for(len(work.queue), work.length, sampling.n)
        work.start(slots.count, self.device)
        while work.queue or work.live():
            free = work.free()
            if work.queue and len(free) >= min(len(work.queue), max(1, slots.count // 8)):
                self.fill(slots, work, free)
            for _ in range(work.steps_to_check()):
                self.step(slots, work)
            finished = self.check(work)
            if finished:
                yield finished

    def slots_for(self, rows: int, length: int, n: int) -> Slots:
        """The slots for this call: the ones kept from the last call when the shape is the same,
        else new ones (their graph captured or their step compiled now, timed as startup)."""
        count = self.slot_count(rows, length, n)
        if self.slots is not None and (self.slots.count, self.slots.length) == (count, length):
            return self.slots
        self.drop_slots()  # the old slots' buffers go before the new ones are allocated
        with self.timed("startup"):
            self.slots = Slots(self.lm, count, length, self.decoder)
        return self.slots

    def slot_count(self, rows: int, length: int, n: int) -> int:
        """How many sequences to decode at once: what fits in memory (the cache of the slots
        kept from the last call counted as free), at most MAX_SLOTS, `batch_size` prompts or
        the rows there are."""
        if self.batch_size is not None:
            return min(rows, self.batch_size * n)
        per_slot = kv_bytes_per_token(self.lm.config, self.lm.dtype) * length
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            kept = 0 if self.slots is None else self.slots.cache.nbytes
            fitting = int((free + kept) * CUDA_MEMORY_SHARE) // per_slot
        else:
            fitting = min(CPU_TOKEN_BUDGET // length, psutil.virtual_memory().available // per_slot)
        return max(1, min(MAX_SLOTS, rows, fitting))

    def fill(self, slots: Slots, work: SlotWork, free: list[int]) -> None:
        """Prefill the next prompts into the free slots, in groups of about PREFILL_TOKENS
        prompt tokens, and sample each one's first token. Every group's inputs are copied to
        the device first, so the host never waits for a prefill to finish."""
        rows = [work.queue.popleft() for _ in range(min(len(free), len(work.queue)))]
        free = free[: len(rows)]
        groups, start = [], 0
        while start < len(rows):
            end = start + max(1, PREFILL_TOKENS // len(work.prompt(rows[start])))
            groups.append(self.prefill_inputs(work, rows[start:end], free[start:end]))
            start = end
        for ids, starts, index, seeds in groups:
            with self.timed("prefill"):
                logits = slots.prefill(ids, starts, index)
            with self.timed("sampling"):
                first = pick_tokens(logits.float(), work.sampling, seeds, 0, candidates=None)
                slots.begin(index, first, ids.shape[1], starts, seeds)
                work.out[index, 0] = first
        work.place(free, rows)

    def prefill_inputs(self, work: SlotWork, rows: list[tuple[int, int]], slots: list[int]):
        """A group's prompts left-padded to the longest (the first: the queue is longest
        first), where each starts, the slots they go to and their seeds, on the device."""
        prompts = [work.prompt(row) for row in rows]
        width, pad = len(prompts[0]), self.tokenizer.pad_token_id
        ids = [[pad] * (width - len(p)) + p for p in prompts]
        starts = [width - len(p) for p in prompts]
        seeds = [work.seed(row) for row in rows]
        return tuple(torch.tensor(x, device=self.device) for x in (ids, starts, slots, seeds))

    def step(self, slots: Slots, work: SlotWork) -> None:
        """One decode step of every slot, queued on the device."""
        with self.timed("decode"):
            logits = slots.decode()
        with self.timed("sampling"):
            steps = slots.steps[:, None]
            chosen = pick_tokens(logits.float(), work.sampling, slots.seeds, steps, candidates=None)
            slots.advance(chosen, work.out)
        work.steps += 1

    def check(self, work: SlotWork) -> Finished:
        """Read the new tokens back (waiting for the device), end the samples that ended and
        free their slots; the prompts whose samples are now all done."""
        out = work.out.cpu().numpy()
        for slot in work.live():
            tokens = work.tokens[slot]
            checked = len(tokens)
            tokens += out[slot, checked : min(work.made(slot), work.sampling.max_tokens)].tolist()
            end = self.kept(tokens, checked, work.sampling)
            if end is not None:
                row = work.rows[slot]
                assert row is not None  # a live slot holds a row
                prompt_tokens = len(work.prompt(row))
                work.end(slot, self.completion(tokens[:end], prompt_tokens, work.sampling))
        return work.finished()

    def kept(self, tokens: list[int], checked: int, sampling: SamplingParams) -> int | None:
        """How many of `tokens` a sample keeps if it ended after its first `checked` (the first
        point where `ended` holds), else None. The text is decoded once, and prefixes only
        when a stop string is in it."""
        ends = range(checked + 1, len(tokens) + 1)
        if sampling.stop and any(s in self.tokenizer.decode(tokens) for s in sampling.stop):
            return next((end for end in ends if self.ended(tokens[:end], sampling)), None)
        return next((end for end in ends if self.final(tokens[end - 1], end, sampling)), None)

    def ended(self, tokens: list[int], sampling: SamplingParams) -> bool:
        """End of sequence, a stop string in the text so far, or max_tokens reached."""
        if self.final(tokens[-1], len(tokens), sampling):
            return True
        return bool(sampling.stop) and any(
            stop in self.tokenizer.decode(tokens) for stop in sampling.stop
        )

    def final(self, token: int, count: int, sampling: SamplingParams) -> bool:
        """Whether the `count`-th token, `token`, is the last: end of sequence or max_tokens."""
        return token in self.eos_ids or count >= sampling.max_tokens

    def completion(self, tokens: list[int], prompt_tokens: int, sampling: SamplingParams):
        """The text before end of sequence or the first stop string (excluded, as vLLM does)."""
        cut_short = len(tokens) >= sampling.max_tokens and tokens[-1] not in self.eos_ids
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in sampling.stop if s in text]
        if cuts:
            text, cut_short = text[: min(cuts)], False
        return Completion(text, "length" if cut_short else "stop", prompt_tokens, len(tokens))


@dataclass
class SlotWork:
    """One generate call on the slots, as the host sees it: the rows (prompt index, sample
    index) still to start, longest prompts first; the row each slot holds, the step it started
    at and its tokens checked so far; the completions so far; and `out`, the device's record of
    every slot's tokens (a few spare columns for samples that ran on past max_tokens)."""

    encoded: list[list[int]]
    seeds: list[int]
    sampling: SamplingParams
    queue: deque[tuple[int, int]] = field(init=False)
    length: int = field(init=False)
    rows: list[tuple[int, int] | None] = field(init=False)
    started: list[int] = field(init=False)
    tokens: list[list[int]] = field(init=False)
    steps: int = 0
    results: dict[int, list[Completion | None]] = field(init=False, default_factory=dict)
    done: list[int] = field(init=False, default_factory=list)
    out: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        order = sorted(range(len(self.encoded)), key=lambda i: -len(self.encoded[i]))
        self.queue = deque((i, k) for i in order for k in range(self.sampling.n))
        longest = len(self.encoded[order[0]]) + self.sampling.max_tokens
        self.length = -(-longest // LENGTH_BUCKET) * LENGTH_BUCKET

    def start(self, count: int, device: str) -> None:
        self.rows, self.started = [None] * count, [0] * count
        self.tokens = [[] for _ in range(count)]
        columns = self.sampling.max_tokens + CHECK_EVERY
        self.out = torch.zeros(count, columns, dtype=torch.long, device=device)

    def prompt(self, row: tuple[int, int]) -> list[int]:
        return self.encoded[row[0]]

    def seed(self, row: tuple[int, int]) -> int:
        return derive_seed(self.seeds[row[0]], row[1])

    def free(self) -> list[int]:
        return [slot for slot, row in enumerate(self.rows) if row is None]

    def live(self) -> list[int]:
        return [slot for slot, row in enumerate(self.rows) if row is not None]

    def made(self, slot: int) -> int:
        """Tokens the slot's sample has made (one from its prefill, one a step since)."""
        return self.steps - self.started[slot] + 1

    def steps_to_check(self) -> int:
        """CHECK_EVERY, or fewer when a sample reaches max_tokens sooner."""
        most = max((self.made(slot) for slot in self.live()), default=self.sampling.max_tokens)
        return max(0, min(CHECK_EVERY, self.sampling.max_tokens - most))

    def place(self, slots: list[int], rows: list[tuple[int, int]]) -> None:
        for slot, row in zip(slots, rows, strict=True):
            self.rows[slot], self.started[slot], self.tokens[slot] = row, self.steps, []

    def end(self, slot: int, completion: Completion) -> None:
        row = self.rows[slot]
        assert row is not None  # only a live slot ends
        index, sample = row
        self.rows[slot] = None
        samples = self.results.setdefault(index, [None] * self.sampling.n)
        samples[sample] = completion
        if all(c is not None for c in samples):
            self.done.append(index)

    def finished(self) -> Finished:
        """The prompts completed since the last call, with their completions."""
        finished = [(index, self.results.pop(index)) for index in self.done]
        self.done = []
        return finished  # type: ignore[return-value]


class SlotCache:
    """The model's key/value cache for a fixed number of sequences ("slots") of at most `length`
    tokens, in buffers allocated once. `aim` says where the next forward's tokens go; the model
    calls `update` for each layer, which writes them there and returns what attention reads:
    when decoding, every slot's whole cache (attention reads as far as the mask goes); for a
    prefill, only the new keys and values (a new sequence attends only to itself)."""

    def __init__(self, config: Any, count: int, length: int, dtype: torch.dtype, device) -> None:
        layers, kv_heads, head_dim = kv_shape(config)
        shape = (count, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.nbytes = 2 * layers * self.keys[0].nbytes
        self.slots = self.positions = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.decoding = False

    def aim(self, slots: torch.Tensor, positions: torch.Tensor, decoding: bool) -> None:
        """The next tokens go to `positions` ([rows, tokens]) of `slots` ([rows, 1])."""
        self.slots, self.positions, self.decoding = slots, positions, decoding

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        cached_keys, cached_values = self.keys[layer_idx], self.values[layer_idx]
        cached_keys[self.slots, :, self.positions] = keys.transpose(1, 2)
        cached_values[self.slots, :, self.positions] = values.transpose(1, 2)
        return (cached_keys, cached_values) if self.decoding else (keys, values)


def slot_mask(
    starts: torch.Tensor, queries: torch.Tensor, width: int, window: int | None
) -> torch.Tensor:
    """Which cache positions each query may attend to, [rows, 1, queries, width] (True: attend):
    its own sequence's (from `starts`), up to its own position `queries` and within the sliding
    window if any. A padding query sees only itself, so no row of the mask is empty."""
    key = torch.arange(width, device=queries.device)
    query = queries[:, :, None]
    mask = ((key >= starts[:, None, None]) | (key == query)) & (key <= query)
    if window:
        mask &= key > query - window
    return mask[:, None]


class Slots:
    """The device side of the slot decoders: the cache and, per slot, the last token, the next
    cache position, where its sequence starts in the cache, its next rotary position, how many
    tokens it made and its seed. Every buffer keeps its address for the life of the slots, so
    the decode step reads and writes the same memory each time and can be replayed from one
    CUDA graph; with "compiled" the step is compiled by torch.compile first."""

    def __init__(self, lm: Any, count: int, length: int, decoder: str) -> None:
        self.lm, self.count, self.length = lm, count, length
        self.cache_keyword = cache_keyword(lm)
        device = lm.device
        self.cache = SlotCache(lm.config, count, length, lm.dtype, device)
        self.window = getattr(lm.config, "sliding_window", None)
        self.every_slot = torch.arange(count, device=device)[:, None]
        self.tokens, self.lengths, self.starts, self.positions, self.steps, self.seeds = (
            torch.zeros(count, dtype=torch.long, device=device) for _ in range(6)
        )
        step = torch.compile(self.forward, dynamic=False) if decoder == "compiled" else self.forward
        if device.type == "cuda" and decoder in ("graphs", "compiled"):
            self.decode: Callable[[], torch.Tensor] = CapturedStep(step, device)
        else:
            self.decode = step
            if decoder == "compiled":
                step()  # compile now, as startup

    def run(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The model's logits for the last position of each row."""
        return self.lm(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_keyword: self.cache},
        ).logits[:, -1]

    def forward(self) -> torch.Tensor:
        """One decode step: every slot's last token in, logits for its next one out."""
        queries = self.lengths[:, None]
        self.cache.aim(self.every_slot, queries, decoding=True)
        mask = slot_mask(self.starts, queries, self.length, self.window)
        return self.run(self.tokens[:, None], self.positions[:, None], mask)

    def prefill(self, ids: torch.Tensor, starts: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Read prompts `ids`, left-padded up to `starts`, into `slots` at cache positions 0 to
        their width; logits for each one's first new token."""
        queries = torch.arange(ids.shape[1], device=ids.device).expand(len(ids), -1)
        self.cache.aim(slots[:, None], queries, decoding=False)
        mask = slot_mask(starts, queries, ids.shape[1], self.window)
        return self.run(ids, (queries - starts[:, None]).clamp(min=0), mask)

    def begin(
        self, slots: torch.Tensor, first: torch.Tensor, width: int, starts: torch.Tensor, seeds
    ) -> None:
        """Set up freshly prefilled slots: one token made (`first`), which goes into the cache
        right after the prompt."""
        self.tokens[slots] = first
        self.lengths[slots] = width
        self.starts[slots] = starts
        self.positions[slots] = width - starts
        self.steps[slots] = 1
        self.seeds[slots] = seeds

    def advance(self, chosen: torch.Tensor, out: torch.Tensor) -> None:
        """Record each slot's new token in `out` and move every slot one position on. Slots
        holding nothing, or a sample that ended, stay at their last position until refilled."""
        out.scatter_(1, self.steps[:, None], chosen[:, None])
        self.tokens.copy_(chosen)
        self.lengths.add_(1).clamp_(max=self.length - 1)
        self.positions.add_(1)
        self.steps.add_(1).clamp_(max=out.shape[1] - 1)


class CapturedStep:
    """A function of fixed buffers on `device`, run twice to warm up (and compile, when
    compiled) and then captured as a CUDA graph; calling it replays the graph and returns the
    captured output. Capture and replay run with `device` current and on streams of that
    device: a model on another GPU than the current one would otherwise run its kernels outside
    the capture, leaving an empty graph whose replays return stale logits."""

    def __init__(self, step: Callable[[], torch.Tensor], device: torch.device) -> None:
        self.device = device
        with torch.cuda.device(device):
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    step()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device)):
                self.output = step()
            self.check()

    def check(self) -> None:
        """RuntimeError (for the fall-back of "auto") if replaying does not write the output:
        a graph that recorded nothing."""
        self.output.fill_(float("nan"))
        self.graph.replay()
        if self.output.isnan().all():
            raise RuntimeError("the captured CUDA graph is empty (it recorded no kernels)")

    def __call__(self) -> torch.Tensor:
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.output


GROUPED_SDPA = "bonito_grouped_sdpa"


def grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention for grouped-query attention with a boolean mask, without
    copying key/value heads (transformers' SDPA repeats them when there is a mask, four times
    the cache traffic for Mistral): the query heads that share a key/value head attend as one
    block of queries. Keys are read only as far as the mask reaches. Other masks go to
    transformers' SDPA."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    kv_heads, width = key.shape[1], attention_mask.shape[-1]
    group = heads // kv_heads
    mask = attention_mask[:, :, None].expand(-1, -1, group, -1, -1)
    output = F.scaled_dot_product_attention(
        query.reshape(batch, kv_heads, group * length, dim),
        key[:, :, :width],
        value[:, :, :width],
        attn_mask=mask.reshape(batch, -1, group * length, width),
        scale=scaling,
    )
    return output.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


NUCLEUS_CANDIDATES = 64
"""Top-p first looks among this many most likely tokens and sorts the whole vocabulary only for
rows whose nucleus reaches beyond them."""


def pick_tokens(
    logits: torch.Tensor,
    sampling: SamplingParams,
    seeds: torch.Tensor,
    step: int | torch.Tensor,
    candidates: int | None = NUCLEUS_CANDIDATES,
) -> torch.Tensor:
    """The next token of each row: greedy at temperature 0, else sampled at the temperature from
    the smallest set of tokens whose probability reaches top_p (no top-k), as vLLM samples. A
    row's draw depends only on its logits, its seed and the step (one for all rows, or a column
    of one per row), never on the other rows. `candidates=None` always sorts the whole
    vocabulary, so that nothing is read back to the host (same draws)."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = (logits / sampling.temperature).softmax(-1)
    if sampling.top_p >= 1:
        ranked, order = probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    elif candidates is None:
        ranked, order = probs.sort(-1, descending=True)
    else:
        ranked, order = probs.topk(min(candidates, probs.shape[-1]))
        if (ranked.sum(-1) < sampling.top_p).any():
            ranked, order = probs.sort(-1, descending=True)
    ranked = ranked.masked_fill(ranked.cumsum(-1) - ranked >= sampling.top_p, 0)
    choice = (ranked / race_noise(seeds, step, order)).argmax(-1)
    return order.gather(-1, choice[:, None]).squeeze(-1)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (
    _signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def race_noise(seeds: torch.Tensor, step: int | torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise for each (row, token): sampling picks argmax of p / noise, which draws a
    token in proportion to p. The noise is a hash (SplitMix64, wrapping int64 arithmetic) of the
    row's seed, the step and the token id, so it needs no generator state and is the same
    whatever else is in the batch, like a counter-based generator."""
    x = seeds[:, None] + (step * (1 << 32) + tokens) * _GOLDEN
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    x = x ^ _shift(x, 31)
    uniform = (_shift(x, 11).double() + 0.5) * 2.0**-53
    return -uniform.log()
