"""What both decoders share: the model and its tokenizer, phase timing, and where a sample
ends (end of sequence, a stop string, max_tokens) and what text it keeps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from bonito.engines.base import Completion, cut_at_stop
from bonito.prompt.sampling import SamplingParams


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


class DecoderCore:
    """The engine's state the decoders read (set up by the engine), timing and sample endings."""

    tokenizer: Any
    lm: Any
    device: str
    batch_size: int | None
    eos_ids: set[int]
    cache_keyword: str
    phases: PhaseTimes | None

    def timed(self, phase: str):
        """A context that adds its time to `phase` when `phases` is set (benchmarks)."""
        return nullcontext() if self.phases is None else self.phases(phase)

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
        text, stopped = cut_at_stop(text, sampling.stop)
        cut_short = cut_short and not stopped
        return Completion(text, "length" if cut_short else "stop", prompt_tokens, len(tokens))
