"""The slot decoder (the CUDA fast path) on CPU: the same slots, static cache, fixed-shape steps
and on-device sampling, run eagerly (CUDA graphs and torch.compile are exercised by
bench/gpu_throughput.py on a GPU). It must write what plain `generate` writes, and sample what
the dynamic decoder samples."""

import warnings
import weakref
from contextlib import contextmanager, nullcontext

import pytest
import torch
from helpers import ENGINE_PROMPTS as PROMPTS
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bonito import BonitoError, SamplingParams
from bonito.engines import generate_all
from bonito.engines.sampling import NUCLEUS_CANDIDATES, pick_tokens
from bonito.engines.transformers import (
    GROUPED_SDPA,
    CapturedStep,
    PhaseTimes,
    TransformersEngine,
    choose_decoder,
    grouped_sdpa,
)
from bonito.models import cache_keyword
from bonito.prompt.sampling import derive_seed


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The dynamic decoder, whose model also serves plain `generate`."""
    return TransformersEngine(str(tiny_model), device="cpu")


@pytest.fixture(scope="module")
def engine(tiny_model):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return TransformersEngine.from_model(lm, tokenizer, name="tiny", decoder="static")


@pytest.fixture
def small_batches(engine):
    """Two prompts' slots at a time, so that slots are refilled while others decode."""
    engine.batch_size = 2
    yield engine
    engine.batch_size = None


@pytest.fixture(scope="module")
def plain_greedy(reference) -> list[list[int]]:
    """The tokens plain `generate` writes for each prompt alone, greedy, at most 40."""
    outputs = []
    for prompt in PROMPTS:
        ids = torch.tensor([reference.encode(prompt)])
        out = reference.lm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=40,
            pad_token_id=reference.tokenizer.pad_token_id,
        )
        outputs.append(out[0, ids.shape[1] :].tolist())
    return outputs


def test_static_decoder_is_chosen_explicitly_and_takes_over_attention(engine, reference):
    assert engine.decoder == "static" and reference.decoder == "dynamic"
    assert engine.lm.config._attn_implementation == GROUPED_SDPA
    assert reference.lm.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("batch_size", [None, 2])
def test_greedy_equals_plain_generate_token_for_token(engine, plain_greedy, batch_size):
    """Prompts of different lengths, read together (left-padded) or refilled into freed slots,
    give the tokens `generate` gives each prompt alone."""
    assert len({len(engine.encode(p)) for p in PROMPTS}) > 3
    engine.batch_size = batch_size
    try:
        outputs = generate_all(engine, PROMPTS, SamplingParams(temperature=0, max_tokens=40))
    finally:
        engine.batch_size = None
    for (completion,), expected in zip(outputs, plain_greedy, strict=True):
        assert completion.completion_tokens == len(expected)
        assert completion.text == engine.tokenizer.decode(expected, skip_special_tokens=True)


def test_samples_equal_the_dynamic_decoders(engine, reference, small_batches):
    """Same seeds, same draws: a run can switch decoders between attempts and resume."""
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=32, seed=5)
    assert generate_all(engine, PROMPTS, sampling) == generate_all(reference, PROMPTS, sampling)


def test_every_prompt_is_yielded_once_as_its_samples_finish(small_batches):
    """Five prompts' ten samples in four slots: the last two take half of the freed slots."""
    assert list(small_batches.generate([], SamplingParams())) == []
    sampling = SamplingParams(n=2, max_tokens=6, seed=0)
    groups = list(small_batches.generate(PROMPTS[:5], sampling))
    assert len(groups) > 1
    indices = [i for group in groups for i, _ in group]
    assert sorted(indices) == list(range(5))
    assert all(len(completions) == 2 for group in groups for _, completions in group)


def test_slots_are_kept_for_calls_of_the_same_shape(engine):
    sampling = SamplingParams(max_tokens=8, seed=0)
    generate_all(engine, PROMPTS, sampling)
    slots = engine.slots
    generate_all(engine, PROMPTS[::-1], sampling)
    assert engine.slots is slots
    generate_all(engine, PROMPTS, SamplingParams(max_tokens=200, seed=0))
    assert engine.slots is not slots


def test_decoder_choice(tiny_model):
    mistral = AutoModelForCausalLM.from_pretrained(tiny_model).config
    assert choose_decoder("auto", "cpu", mistral) == "dynamic"
    assert choose_decoder("auto", "cuda:0", mistral) == "graphs"
    assert choose_decoder("auto", "cuda", GPT2Config()) == "dynamic"
    assert choose_decoder("compiled", "cpu", mistral) == "compiled"
    with pytest.raises(BonitoError, match="'graphs' needs a CUDA device; use decoder='static'"):
        choose_decoder("graphs", "cpu", mistral)
    with pytest.raises(BonitoError, match="runs unquantized Llama and Mistral models, not gpt2"):
        choose_decoder("static", "cpu", GPT2Config())
    with pytest.raises(BonitoError, match="Unknown decoder 'fast'; choose one of auto"):
        TransformersEngine(str(tiny_model), decoder="fast")


@pytest.mark.parametrize("spread", ["peaked", "flat"])
def test_sorting_the_whole_vocabulary_draws_the_same_tokens(spread):
    """The slot decoder samples without a host check (candidates=None): same draws as the
    candidates shortcut, whether the nucleus lies among the candidates or beyond them."""
    logits = torch.randn(512, 4 * NUCLEUS_CANDIDATES, generator=torch.Generator().manual_seed(2))
    if spread == "peaked":
        logits[:, :3] += 8
    sampling = SamplingParams(temperature=0.7, top_p=0.9)
    seeds = torch.tensor([derive_seed(3, row) for row in range(len(logits))])
    steps = torch.arange(len(logits))[:, None]
    shortcut = pick_tokens(logits, sampling, seeds, steps)
    assert torch.equal(pick_tokens(logits, sampling, seeds, steps, candidates=None), shortcut)


def test_grouped_attention_equals_transformers_sdpa():
    """Grouped query heads over an unrepeated cache, reading only the mask's width, give what
    transformers' SDPA gives with the key/value heads repeated."""
    generator = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 4, True
    query = torch.randn(3, 8, 5, 16, generator=generator)
    key, value = torch.randn(2, 3, 2, 12, 16, generator=generator)
    mask = torch.rand(3, 1, 5, 9, generator=generator) > 0.3
    mask[..., 0] = True
    grouped, _ = grouped_sdpa(module, query, key, value, mask, scaling=0.25)
    expected, _ = sdpa_attention_forward(
        module, query, key[:, :, :9], value[:, :, :9], mask, scaling=0.25
    )
    assert torch.allclose(grouped, expected, atol=1e-5)
    without_mask = grouped_sdpa(module, query, key, value, None, scaling=0.25, dropout=0.0)[0]
    expected = sdpa_attention_forward(module, query, key, value, None, scaling=0.25)[0]
    assert torch.equal(without_mask, expected)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA graph capture failed\nmore detail"),
        AttributeError("'SlotCache' object has no attribute 'get_query_offset'"),
    ],
    ids=["RuntimeError", "AttributeError"],
)
def test_a_failing_automatic_slot_decoder_falls_back_to_the_dynamic_one(
    tiny_model, reference, monkeypatch, caplog, error
):
    """Where "auto" chose the slot decoder (CUDA) and it fails before producing anything, with
    whatever exception (a failed graph capture, a transformers internal that moved), generation
    goes on with the dynamic decoder: same samples. The failed slots are gone, and the device's
    cache emptied, before the dynamic decoder sizes its batches from free memory."""
    from bonito.engines.transformers import slots as engine_module

    made = []

    class FailingSlots(engine_module.Slots):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(weakref.ref(self))

        def prefill(self, *args):
            raise type(error)(*error.args)  # a new one, as in life (not kept by the test)

    def empty_cache():
        emptied.append(bool(made) and not any(ref() for ref in made))

    emptied = []  # at each torch.cuda.empty_cache: were all failed slots gone?
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    explicit = TransformersEngine.from_model(lm, tokenizer, decoder="static")
    monkeypatch.setattr(engine_module, "Slots", FailingSlots)
    sampling = SamplingParams(n=2, temperature=0.7, max_tokens=24, seed=3)
    with pytest.raises(type(error)):
        generate_all(explicit, PROMPTS, sampling)

    automatic = TransformersEngine.from_model(lm, tokenizer, decoder="static")
    automatic.automatic = True  # as "auto" on CUDA
    made.clear()
    with caplog.at_level("WARNING", logger="bonito"):
        outputs = generate_all(automatic, PROMPTS, sampling)
    first = str(error).splitlines()[0]
    assert (
        f"The static decoder failed ({type(error).__name__}: {first}); its memory freed, "
        "generating with the dynamic decoder instead." in caplog.messages
    )
    assert made and emptied[-1] is True
    assert automatic.decoder == "dynamic" and lm.config._attn_implementation != GROUPED_SDPA
    expected = generate_all(reference, PROMPTS, sampling)
    assert [[c.text for c in o] for o in outputs] == [[c.text for c in o] for o in expected]


def test_the_cache_goes_by_the_name_the_forward_declares(engine, reference):
    """transformers 5.25 renamed `past_key_values` to `cache` behind a deprecated alias; a name
    the forward does not declare would be swallowed by its **kwargs (a fresh cache each step)."""

    class OldForward(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, **kwargs): ...

    class NewForward(torch.nn.Module):
        def forward(self, input_ids, cache=None, **kwargs): ...

    assert cache_keyword(OldForward()) == "past_key_values"
    assert cache_keyword(NewForward()) == "cache"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for decoder in (engine, reference):
            generate_all(decoder, PROMPTS[:2], SamplingParams(max_tokens=4, seed=1))
    assert not [w for w in caught if "past_key_values" in str(w.message)]


class FakeCuda:
    """Stand-ins for the few torch.cuda calls CapturedStep makes (no GPU here), as CUDA behaves:
    a default stream belongs to the device current when it is made, and a kernel is recorded
    into a graph only when its tensor's device is the capture stream's."""

    def __init__(self, monkeypatch, records: bool = True) -> None:
        self.current, self.capturing, self.replayed_on = "cuda:0", None, []
        fake = self

        class Device:
            def __init__(self, device):
                self.device = str(device)

            def __enter__(self):
                self.previous, fake.current = fake.current, self.device

            def __exit__(self, *exc):
                fake.current = self.previous

        class Stream:
            def __init__(self, device=None):
                self.device = fake.current if device is None else str(device)

            def wait_stream(self, other):
                pass

        class CUDAGraph:
            recorded = None

            def replay(self):
                fake.replayed_on.append(fake.current)
                if self.recorded:
                    self.recorded()

        @contextmanager
        def graph(cuda_graph, stream=None):
            fake.capturing = (cuda_graph, stream or Stream())
            yield
            fake.capturing = None

        for name, value in {
            "device": Device,
            "Stream": Stream,
            "stream": lambda stream: nullcontext(),
            "current_stream": lambda device=None: Stream(device),
            "CUDAGraph": CUDAGraph,
            "graph": graph,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)
        self.records = records

    def step(self, device: str):
        """A decode step on `device` whose logits are 1 when run, 2 when replayed."""

        def step():
            logits = torch.ones(2, 3)
            if self.capturing:
                graph, stream = self.capturing
                if self.records and stream.device == device:
                    graph.recorded = lambda: logits.fill_(2.0)
            return logits

        return step


def test_a_graph_is_captured_and_replayed_on_the_models_device(monkeypatch):
    """With the model on cuda:1 while cuda:0 is current, capture runs on a stream of cuda:1 (so
    the kernels are recorded) and replays run with cuda:1 current."""
    cuda = FakeCuda(monkeypatch)
    captured = CapturedStep(cuda.step("cuda:1"), torch.device("cuda:1"))
    assert torch.equal(captured(), torch.full((2, 3), 2.0))
    assert cuda.replayed_on and set(cuda.replayed_on) == {"cuda:1"}
    assert cuda.current == "cuda:0"  # left as it was


def test_an_empty_graph_is_refused(monkeypatch):
    """A graph that recorded nothing would replay stale logits: a RuntimeError instead, which
    "auto" turns into the dynamic decoder."""
    cuda = FakeCuda(monkeypatch, records=False)
    with pytest.raises(RuntimeError, match="the captured CUDA graph is empty"):
        CapturedStep(cuda.step("cuda:1"), torch.device("cuda:1"))


def test_phases_on_cuda_are_timed_without_making_the_host_wait(monkeypatch):
    """Benchmarks time phases by CUDA events: no synchronize per phase (which would serialize
    host and device), one when the times are read. No GPU here: the event calls stood in for."""
    synchronized, clock = [], iter(range(100))

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream):
            assert stream == "stream of cuda:0"
            self.at = next(clock)

        def elapsed_time(self, end):  # milliseconds
            return 1000.0 * (end.at - self.at)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synchronized.append(1))
    phases = PhaseTimes("cuda:0")
    for phase in ("prefill", "decode", "sampling", "decode"):
        with phases(phase):
            pass
    assert not synchronized
    assert phases.seconds == {"prefill": 1.0, "decode": 2.0, "sampling": 1.0}
    assert len(synchronized) == 1
