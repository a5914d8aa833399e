"""The slot decoder (the CUDA fast path) on CPU: the same slots, static cache, fixed-shape steps
and on-device sampling, run eagerly (CUDA graphs and torch.compile are exercised by
bench/gpu_throughput.py on a GPU). It must write what plain `generate` writes, and sample what
the dynamic decoder samples."""

import pytest
import torch
from test_engines import (
    PROMPTS,
    check_n_samples_seeded_reproducible_and_distinct,
    check_stop_strings_and_finish_reasons,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bonito import BonitoError, SamplingParams
from bonito.engines import generate_all
from bonito.engines.transformers import (
    GROUPED_SDPA,
    NUCLEUS_CANDIDATES,
    TransformersEngine,
    choose_decoder,
    grouped_sdpa,
    pick_tokens,
)
from bonito.sampling import derive_seed


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


def test_n_samples_seeded_reproducible_and_distinct(engine):
    check_n_samples_seeded_reproducible_and_distinct(engine, PROMPTS[:4])


def test_a_prompts_samples_do_not_depend_on_the_rest_of_the_batch(engine):
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=32)
    seeds = [derive_seed(7, i) for i in range(len(PROMPTS))]
    together = generate_all(engine, PROMPTS, sampling, seeds)
    pairs = zip(PROMPTS, seeds, strict=True)
    alone = [generate_all(engine, [p], sampling, [s])[0] for p, s in pairs]
    engine.batch_size = 3
    try:
        reversed_ = generate_all(engine, PROMPTS[::-1], sampling, seeds[::-1])[::-1]
    finally:
        engine.batch_size = None
    assert alone == together == reversed_


def test_stop_strings_and_finish_reasons(engine):
    check_stop_strings_and_finish_reasons(engine, PROMPTS)


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


def test_a_failing_automatic_slot_decoder_falls_back_to_the_dynamic_one(
    tiny_model, reference, monkeypatch, caplog
):
    """Where "auto" chose the slot decoder (CUDA) and it fails before producing anything, as a
    failed graph capture would, generation goes on with the dynamic decoder: same samples."""
    from bonito.engines import transformers as engine_module

    def capture_fails(*args, **kwargs):
        raise RuntimeError("CUDA graph capture failed\nmore detail")

    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    explicit = TransformersEngine.from_model(lm, tokenizer, decoder="static")
    monkeypatch.setattr(engine_module, "Slots", capture_fails)
    sampling = SamplingParams(n=2, temperature=0.7, max_tokens=24, seed=3)
    with pytest.raises(RuntimeError, match="capture failed"):
        generate_all(explicit, PROMPTS, sampling)

    automatic = TransformersEngine.from_model(lm, tokenizer, decoder="static")
    automatic.automatic = True  # as "auto" on CUDA
    with caplog.at_level("WARNING", logger="bonito"):
        outputs = generate_all(automatic, PROMPTS, sampling)
    assert "static decoder failed (CUDA graph capture failed)" in caplog.text
    assert automatic.decoder == "dynamic" and lm.config._attn_implementation != GROUPED_SDPA
    expected = generate_all(reference, PROMPTS, sampling)
    assert [[c.text for c in o] for o in outputs] == [[c.text for c in o] for o in expected]
