"""The engine contract (engines/base.py), written once and kept by every engine on the tiny
generator: each prompt's completions once, in order; n samples, reproducible from the prompt's
seed and distinct across seeds, whatever else is decoded beside them; stop strings cut, finish
reasons and token counts; BOS once; a prompt that fails comes back as a Failure on its own.

The engines: transformers (dynamic and static decoders), llama.cpp and the openai engine against
llama-cpp-python's server (each skipped, saying why, where its package is missing; `transformers
serve` is left out: it ignores seeds), and vLLM in-process and behind `vllm serve` (marked
`vllm`: `make test` runs them in .venv-vllm). One engine at a time, each loaded once for the
module; llama-cpp-python's server and the GGUF file are the session's (conftest.py), shared
with the engines' own tests."""

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import ENGINE_PASSAGES as PASSAGES
from helpers import ENGINE_PROMPTS as PROMPTS
from servers import FaultProxy
from transformers import AutoModelForCausalLM, AutoTokenizer

from bonito import SamplingParams, build_prompt
from bonito.engines import generate_all, load_engine
from bonito.engines.base import Failure
from bonito.prompt.sampling import derive_seed

HAS_LLAMA = all(importlib.util.find_spec(m) for m in ("llama_cpp", "gguf"))
NO_LLAMA = "the llamacpp extra is not installed (pip install 'bonito[llamacpp]')"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = "vLLM is not installed here: `make test` runs these tests in .venv-vllm"
ENGINES = [
    "dynamic",
    "static",
    pytest.param("llamacpp", marks=pytest.mark.skipif(not HAS_LLAMA, reason=NO_LLAMA)),
    "openai",
    pytest.param(
        "vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)]
    ),
    pytest.param(
        "vllm-serve", marks=[pytest.mark.vllm, pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)]
    ),
]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, tiny_model):
    """Each engine in turn (the last one let go before the next loads; vLLM's two are the
    session's, shared with the other vllm test modules)."""
    kind = request.param
    if kind == "dynamic":
        yield load_engine(str(tiny_model), "transformers", device="cpu")
    elif kind == "static":
        from bonito.engines.transformers import TransformersEngine

        lm = AutoModelForCausalLM.from_pretrained(tiny_model)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model)
        yield TransformersEngine.from_model(lm, tokenizer, name="tiny", decoder="static")
    elif kind == "llamacpp":
        engine = load_engine(str(request.getfixturevalue("tiny_gguf")), "llamacpp", n_threads=1)
        yield engine
        engine.close()
    elif kind == "openai":
        server = request.getfixturevalue("llama_server")
        yield load_engine(str(tiny_model), "openai", base_url=server.url + "/v1")
    elif kind == "vllm":
        yield request.getfixturevalue("vllm_bonito").engine
    else:
        server = request.getfixturevalue("vllm_server")
        yield load_engine(str(tiny_model), "openai", base_url=server.url + "/v1")


@contextmanager
def narrow(engine) -> Iterator:
    """The same model decoding fewer sequences at once where the engine has such an option
    (three prompts' worth in transformers, two sequences in llama.cpp); else the engine."""
    if engine.name == "transformers":
        engine.batch_size = 3
        try:
            yield engine
        finally:
            engine.batch_size = None
    elif engine.name == "llamacpp":
        from bonito.engines.llamacpp import LlamaCppEngine

        two = LlamaCppEngine(engine.model, n_threads=1, n_parallel=2)
        try:
            yield two
        finally:
            two.close()
    else:
        yield engine


def test_every_prompt_comes_back_once_in_order(engine):
    """Groups as prompts finish, each prompt in exactly one; generate_all puts them in order."""
    assert list(engine.generate([], SamplingParams())) == []
    sampling = SamplingParams(n=2, max_tokens=6, seed=0)
    groups = list(engine.generate(PROMPTS, sampling))
    indices = [i for group in groups for i, _ in group]
    assert sorted(indices) == list(range(len(PROMPTS)))
    assert all(len(completions) == 2 for group in groups for _, completions in group)
    in_order = generate_all(engine, PROMPTS, sampling)
    assert in_order == [completions for _, completions in sorted(sum(groups, []))]


def test_n_samples_seeded_reproducible_and_distinct(engine):
    """n samples a prompt, the same again with the same seed, others with another."""
    prompts = PROMPTS[:4]
    sampling = SamplingParams(n=3, temperature=1.0, max_tokens=24, seed=11)
    first = generate_all(engine, prompts, sampling)
    assert [len(o) for o in first] == [3] * len(prompts)
    assert generate_all(engine, prompts, sampling) == first
    other = generate_all(
        engine, prompts, SamplingParams(n=3, temperature=1.0, max_tokens=24, seed=12)
    )
    assert other != first
    assert any(len({c.text for c in o}) > 1 for o in first)


def test_a_prompts_samples_do_not_depend_on_the_rest_of_the_batch(engine):
    """With per-prompt seeds, a prompt gets the same samples alone, among others, and at another
    position with fewer sequences decoded at once: what resuming a run relies on."""
    prompts = PROMPTS[:6]
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=32)
    seeds = [derive_seed(7, i) for i in range(len(prompts))]
    together = generate_all(engine, prompts, sampling, seeds)
    pairs = zip(prompts, seeds, strict=True)
    alone = [generate_all(engine, [p], sampling, [s])[0] for p, s in pairs]
    with narrow(engine) as narrower:
        reversed_ = generate_all(narrower, prompts[::-1], sampling, seeds[::-1])[::-1]
    assert alone == together == reversed_
    assert generate_all(engine, prompts, sampling, [s + 1 for s in seeds]) != together


def test_stop_strings_finish_reasons_and_token_counts(engine):
    """A stop string ends the text before it (finish "stop"), max_tokens cuts it (finish
    "length", that many tokens), end of sequence ends it, and no special token or prompt marker
    is left in the text."""
    stopped = generate_all(
        engine, PROMPTS[:4], SamplingParams(max_tokens=64, seed=0, stop=("<|pipe|>",))
    )
    for outputs in stopped:
        assert "<|pipe|>" not in outputs[0].text
        assert outputs[0].finish_reason == "stop"
    free = generate_all(engine, PROMPTS[:4], SamplingParams(max_tokens=64, seed=0))
    for cut, whole in zip(stopped, free, strict=True):
        if "<|pipe|>" in whole[0].text:
            assert whole[0].text.startswith(cut[0].text)
            assert cut[0].completion_tokens < whole[0].completion_tokens
    short = generate_all(engine, PROMPTS[:2], SamplingParams(max_tokens=3, seed=0))
    assert [(o[0].finish_reason, o[0].completion_tokens) for o in short] == [("length", 3)] * 2
    ended = generate_all(engine, PROMPTS[:2], SamplingParams(max_tokens=128, temperature=0))
    assert all(o[0].finish_reason == "stop" and o[0].completion_tokens < 128 for o in ended)
    assert all("</s>" not in o[0].text and "<|task|>" not in o[0].text for o in ended)
    for (completion,) in free:
        assert "<|tasktype|>" not in completion.text and "<|context|>" not in completion.text
        assert "</s>" not in completion.text


def test_bos_once(engine, tiny_model):
    """Every prompt counts the tokens the generator's tokenizer gives it (BOS added once, as
    vLLM's LLM.generate adds it); an engine that tokenizes itself never doubles a BOS given."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    results = generate_all(engine, PROMPTS, SamplingParams(max_tokens=1, seed=0))
    expected = [len(tokenizer(p).input_ids) for p in PROMPTS]
    assert [r[0].prompt_tokens for r in results] == expected
    assert all(count > 10 for count in expected)
    if hasattr(engine, "encode"):
        ids = engine.encode(PROMPTS[0])
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
        assert engine.encode(tokenizer.bos_token + PROMPTS[0]) == ids


@pytest.fixture(
    params=[
        pytest.param("llamacpp", marks=pytest.mark.skipif(not HAS_LLAMA, reason=NO_LLAMA)),
        "openai",
    ]
)
def failing_second_prompt(request, tiny_model) -> Iterator:
    """An engine that reports failures prompt by prompt, set up so that the second of two prompts
    cannot be served (longer than a llama.cpp engine's sequences, or always refused by the server
    behind an openai engine); the two prompts, and the reason the failure gives. The transformers
    and in-process vLLM engines have no such failures: an error of theirs ends the whole call."""
    if request.param == "llamacpp":
        from bonito.engines.llamacpp import LlamaCppEngine

        gguf = request.getfixturevalue("tiny_gguf")
        small = LlamaCppEngine(str(gguf), n_threads=1, n_ctx=256, n_parallel=2)
        too_long = build_prompt(" ".join(PASSAGES * 4), "nli")
        try:
            yield small, [PROMPTS[0], too_long], "this engine runs sequences of at most 256"
        finally:
            small.close()
    else:
        server, refused = request.getfixturevalue("llama_server"), PROMPTS[1]
        proxy = FaultProxy(server.url, lambda seen: "500" if seen.prompt == refused else "pass")
        try:
            failing = load_engine(str(tiny_model), "openai", base_url=proxy.url, max_retries=0)
            yield failing, [PROMPTS[0], refused], "HTTP 500: injected failure (1 attempt)"
        finally:
            proxy.close()


def test_a_prompt_that_fails_comes_back_as_a_failure_alone(failing_second_prompt):
    failing, prompts, reason = failing_second_prompt
    groups = list(failing.generate(prompts, SamplingParams(max_tokens=8)))
    results = dict(item for group in groups for item in group)
    assert isinstance(results[1], Failure) and reason in results[1].reason
    assert not isinstance(results[0], Failure) and results[0][0].completion_tokens > 0
