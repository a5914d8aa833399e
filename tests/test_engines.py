"""The transformers engine on the project's tiny generator (the engine contract,
test_engine_contract.py, covers the rest); engine choice and load errors."""

import importlib.util
import math

import pytest
import torch
from helpers import ENGINE_PROMPTS as PROMPTS

from bonito import BonitoError, SamplingParams
from bonito.engines import choose_engine, generate_all, load_engine
from bonito.engines.sampling import NUCLEUS_CANDIDATES, pick_tokens, race_noise
from bonito.engines.transformers import TransformersEngine
from bonito.prompt.sampling import derive_seed


@pytest.fixture(scope="module")
def engine(tiny_model):
    return TransformersEngine(str(tiny_model), device="cpu")


def plain_greedy(engine, prompt, max_tokens):
    ids = torch.tensor([engine.encode(prompt)])
    out = engine.lm.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_tokens,
        pad_token_id=engine.tokenizer.pad_token_id,
    )
    return engine.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_batched_greedy_equals_plain_generate_per_prompt(engine, batch_size):
    engine.batch_size = batch_size
    try:
        outputs = generate_all(engine, PROMPTS, SamplingParams(temperature=0, max_tokens=40))
    finally:
        engine.batch_size = None
    assert [o[0].text for o in outputs] == [plain_greedy(engine, p, 40) for p in PROMPTS]


def test_batches_are_length_sorted_and_sized(engine):
    encoded = [engine.encode(p) for p in PROMPTS]
    engine.batch_size = 4
    try:
        batches = engine.batches(encoded, SamplingParams())
    finally:
        engine.batch_size = None
    assert [len(b) for b in batches] == [4, 4, 2]
    lengths = [len(encoded[i]) for b in batches for i in b]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(i for b in batches for i in b) == list(range(len(PROMPTS)))


@pytest.mark.parametrize("spread", ["peaked", "flat"])
def test_top_p_samples_the_nucleus_in_proportion(spread):
    """Draws stay inside the smallest set reaching top_p and follow its renormalised
    probabilities, both when the nucleus is among the first candidates and when it is not."""
    vocab = 4 * NUCLEUS_CANDIDATES
    probs = torch.linspace(2.0, 1.0, vocab)[
        torch.randperm(vocab, generator=torch.Generator().manual_seed(1))
    ]
    if spread == "peaked":
        probs[:4] = torch.tensor([4000.0, 2000.0, 1000.0, 500.0])
    probs /= probs.sum()
    sampling = SamplingParams(temperature=1.0, top_p=0.8, seed=0)
    ranked, order = probs.sort(descending=True)
    nucleus = order[ranked.cumsum(0) - ranked < 0.8]
    seeds = torch.tensor([derive_seed(0, row) for row in range(20_000)])
    draws = pick_tokens(probs.log().repeat(20_000, 1), sampling, seeds, step=0)
    assert set(draws.tolist()) <= set(nucleus.tolist())
    counts = torch.bincount(draws, minlength=vocab)[nucleus].float()
    expected = probs[nucleus] / probs[nucleus].sum()
    assert torch.allclose(counts / counts.sum(), expected, atol=0.01)


def test_every_prompt_is_yielded_once_in_groups(engine):
    engine.batch_size = 4
    try:
        groups = list(engine.generate(PROMPTS, SamplingParams(max_tokens=4, seed=0)))
    finally:
        engine.batch_size = None
    assert [len(g) for g in groups] == [4, 4, 2]
    assert sorted(i for g in groups for i, _ in g) == list(range(len(PROMPTS)))


def test_race_noise_is_splitmix64_and_exponential():
    """The vectorised hash equals a plain-Python SplitMix64 (so int64 arithmetic wraps as
    assumed), and the noise it gives has the mean and spread of Exp(1)."""

    def reference(seed: int, step: int, token: int) -> float:
        mask = (1 << 64) - 1
        x = (seed + (step * (1 << 32) + token) * 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        x ^= x >> 31
        return -math.log(((x >> 11) + 0.5) * 2.0**-53)

    seeds = torch.tensor([0, 1, derive_seed("a"), (1 << 63) - 1])
    tokens = torch.tensor([[0, 5, 31999]] * 4)
    noise = race_noise(seeds, 3, tokens)
    expected = [
        [reference(int(s), 3, int(t)) for t in row] for s, row in zip(seeds, tokens, strict=True)
    ]
    assert torch.allclose(noise, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    many = race_noise(torch.tensor([derive_seed(1)]), 0, torch.arange(200_000)[None])
    assert abs(many.mean().item() - 1) < 0.01 and abs(many.std().item() - 1) < 0.01


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_auto_without_vllm_is_transformers_and_vllm_says_how_to_install(tiny_model):
    assert choose_engine("auto") == "transformers"
    with pytest.raises(BonitoError, match=r"pip install 'bonito\[vllm\]'"):
        load_engine(str(tiny_model), "vllm")


def test_vllm_options_on_the_transformers_engine_are_refused(tiny_model):
    with pytest.raises(BonitoError, match="does not take gpu_memory_utilization"):
        TransformersEngine(str(tiny_model), gpu_memory_utilization=0.9)


def test_unknown_engine():
    with pytest.raises(BonitoError, match="Unknown engine 'tgi'; choose one of auto"):
        choose_engine("tgi")


def test_model_paths_that_are_not_models(tmp_path):
    with pytest.raises(BonitoError, match="The model path './no/such/model' does not exist"):
        TransformersEngine("./no/such/model")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BonitoError, match="is not a model: it has no config.json"):
        TransformersEngine(str(tmp_path))


def test_hub_model_that_cannot_load_gets_one_paragraph():
    with pytest.raises(BonitoError) as error:
        TransformersEngine("BatsResearch/not-a-real-bonito")
    message = str(error.value)
    assert message.startswith("Could not load the model 'BatsResearch/not-a-real-bonito'")
    assert "hf download BatsResearch/not-a-real-bonito" in message
    assert "bonito tiny-model" in message
    assert "\n" not in message
