"""The slot decoders: a fixed number of sequences ("slots") over a cache allocated once; a slot
whose sample ended takes the next prompt; each decode step has fixed shapes, so on CUDA it is
captured once as a CUDA graph and replayed, optionally compiled first with torch.compile;
sampling stays on the device and the host looks at the tokens every few steps."""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch

from bonito.engines.base import Completion, Finished
from bonito.engines.sampling import pick_tokens
from bonito.engines.transformers.core import DecoderCore
from bonito.engines.transformers.memory import CPU_TOKEN_BUDGET, kv_bytes_per_token, kv_shape
from bonito.models import cache_keyword
from bonito.prompt.sampling import SamplingParams, derive_seed

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


class SlotDecoding(DecoderCore):
    """The engine's slot decoders ("static", "graphs", "compiled")."""

    decoder: str
    slots: Slots | None

    def drop_slots(self) -> None:
        """Let the slots go, and their memory back to the device (not only to PyTorch's cache,
        which the memory-sized batches of the dynamic decoder would not count as free)."""
        self.slots = None
        gc.collect()
        torch.cuda.empty_cache()  # nothing without CUDA

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
