"""The llama.cpp engine on the tiny generator converted to GGUF by scripts/convert_to_gguf.py:
the same prompt tokens and greedy tasks as the transformers engine, prompts waiting for room,
options and bad paths (the engine contract, test_engine_contract.py, covers the rest). Skipped
where the `llamacpp` extra is missing."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
from servers import convert_to_gguf

from bonito import BonitoError, SamplingParams, build_prompt, parse_task
from bonito.engines import generate_all
from bonito.engines.llamacpp import LlamaCppEngine, check_gguf_path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAS_GGUF = importlib.util.find_spec("gguf") is not None
needs_llama = pytest.mark.skipif(
    not (HAS_LLAMA and HAS_GGUF),
    reason="the llamacpp extra is not installed (pip install 'bonito[llamacpp]')",
)
needs_gguf = pytest.mark.skipif(
    not HAS_GGUF, reason="gguf is not installed (pip install 'bonito[llamacpp]')"
)
MARKERS = ("<|tasktype|>", "<|context|>", "<|task|>", "<|pipe|>", "{{context}}")


def read_passages(path: Path, limit: int | None = None) -> list[str]:
    lines = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [json.loads(line)["text"] for line in lines[:limit]]


EXAMPLES = read_passages(ROOT / "examples" / "passages.jsonl")
PROMPTS = [build_prompt(p, t) for p in EXAMPLES[:6] for t in ("ynqa", "nli")]


@pytest.fixture(scope="module")
def engine(tiny_gguf):
    engine = LlamaCppEngine(str(tiny_gguf), n_threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def transformers_engine(tiny_model):
    from bonito.engines.transformers import TransformersEngine

    return TransformersEngine(str(tiny_model), device="cpu")


@needs_gguf
def test_conversion_keeps_the_markers_whole_and_the_special_tokens(tiny_model, tiny_gguf):
    import gguf
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(tiny_gguf)
    field = {name: f.contents() for name, f in reader.fields.items()}
    tokens, types = field["tokenizer.ggml.tokens"], field["tokenizer.ggml.token_type"]
    assert field["general.architecture"] == "llama"
    assert (field["tokenizer.ggml.model"], field["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    user_defined = {
        tokens[i] for i, kind in enumerate(types) if kind == gguf.TokenType.USER_DEFINED
    }
    assert set(MARKERS) <= user_defined <= set(MARKERS) | {f" {m}" for m in MARKERS}
    hf = AutoTokenizer.from_pretrained(tiny_model)
    assert field["tokenizer.ggml.bos_token_id"] == hf.bos_token_id
    assert field["tokenizer.ggml.eos_token_id"] == hf.eos_token_id
    assert field["tokenizer.ggml.add_bos_token"] is True
    assert len(tokens) == len(hf)
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names  # tied embeddings
    assert len(names) == 2 + 9 * 2


@needs_gguf
@pytest.mark.heavy
def test_conversion_refuses_what_it_cannot_convert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    result = convert_to_gguf(tmp_path, tmp_path / "out.gguf")
    assert result.returncode == 1
    assert "GPT2LMHeadModel is not a Llama/Mistral architecture" in result.stderr
    assert "convert_hf_to_gguf.py" in result.stderr
    assert not (tmp_path / "out.gguf").exists()


@needs_llama
def test_prompt_tokens_match_the_transformers_engine_on_real_passages(engine, transformers_engine):
    """llama.cpp tokenizes bonito prompts exactly as the Hugging Face tokenizer does, BOS once."""
    passages = list(EXAMPLES)
    for path in sorted(SHARED_DATA.glob("*/passages.jsonl")):
        passages += read_passages(path, limit=40)
    kinds = ("exqa", "ynqa", "nli", "summarization", "qg", "sentiment")
    prompts = [build_prompt(p, kinds[i % len(kinds)]) for i, p in enumerate(passages)]
    assert [engine.encode(p) for p in prompts] == [transformers_engine.encode(p) for p in prompts]


@needs_llama
def test_greedy_tasks_match_the_transformers_engine(tiny_gguf, transformers_engine):
    """With f32 weights and cache and plain attention (flash attention's online softmax rounds
    differently, enough to flip a near tie now and then), greedy decoding writes the same text,
    hence the same parsed tasks, as transformers."""
    exact = LlamaCppEngine(
        str(tiny_gguf), n_threads=1, cache_type="f32", flash_attn=False, n_parallel=4, n_ctx=2048
    )
    passages = EXAMPLES + [
        p for path in sorted(SHARED_DATA.glob("*/passages.jsonl")) for p in read_passages(path, 1)
    ]
    contexts = [p for p in passages for _ in ("ynqa", "nli")]
    prompts = [build_prompt(p, t) for p in passages for t in ("ynqa", "nli")]
    sampling = SamplingParams(temperature=0, max_tokens=96)
    try:
        ours = generate_all(exact, prompts, sampling)
    finally:
        exact.close()
    theirs = generate_all(transformers_engine, prompts, sampling)
    assert [o[0].text for o in ours] == [t[0].text for t in theirs]
    tasks = [parse_task(o[0].text, c) for o, c in zip(ours, contexts, strict=True)]
    assert tasks == [parse_task(t[0].text, c) for t, c in zip(theirs, contexts, strict=True)]
    assert sum(type(t).__name__ == "Task" for t in tasks) >= len(tasks) // 2
    assert [o[0].completion_tokens for o in ours] == [t[0].completion_tokens for t in theirs]
    assert [o[0].prompt_tokens for o in ours] == [t[0].prompt_tokens for t in theirs]


@needs_llama
def test_every_prompt_is_yielded_once_as_its_samples_finish(tiny_gguf, engine):
    """Few slots, a small cache and prompts read in parts of 32 tokens: prompts wait for room,
    each comes back exactly once, with the samples it gets from the roomy engine."""
    sampling = SamplingParams(n=2, max_tokens=16, seed=0)
    small = LlamaCppEngine(str(tiny_gguf), n_threads=1, n_parallel=4, n_ctx=1024, n_batch=32)
    try:
        groups = list(small.generate(PROMPTS, sampling))
    finally:
        small.close()
    assert len(groups) > 1
    indices = [i for group in groups for i, _ in group]
    assert sorted(indices) == list(range(len(PROMPTS)))
    assert dict(item for group in groups for item in group) == dict(
        enumerate(generate_all(engine, PROMPTS, sampling))
    )


@needs_llama
def test_more_samples_than_sequences_are_refused(tiny_gguf):
    small = LlamaCppEngine(str(tiny_gguf), n_threads=1, n_ctx=256, n_parallel=2)
    try:
        with pytest.raises(BonitoError, match="n=3 samples per prompt need n_parallel"):
            list(small.generate(PROMPTS[:1], SamplingParams(n=3)))
    finally:
        small.close()


@needs_llama
def test_threads_default_to_the_machines_cores(tiny_gguf):
    engine = LlamaCppEngine(str(tiny_gguf))
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert engine.n_threads == cores
    finally:
        engine.close()


def test_paths_that_are_not_gguf_files(tmp_path):
    with pytest.raises(BonitoError, match="The model file './no/such.gguf' does not exist"):
        check_gguf_path("./no/such.gguf")
    with pytest.raises(BonitoError, match="is a folder, but the llamacpp engine takes one .gguf"):
        check_gguf_path(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(BonitoError, match="is not a GGUF file") as error:
        check_gguf_path(str(tmp_path / "model.safetensors"))
    assert "\n" not in str(error.value) and "convert_to_gguf.py" in str(error.value)


@needs_llama
def test_engine_refuses_bad_paths_and_options(tmp_path, tiny_gguf):
    with pytest.raises(BonitoError, match="is a folder"):
        LlamaCppEngine(str(tmp_path))
    with pytest.raises(BonitoError, match="does not take device; it takes n_ctx"):
        LlamaCppEngine(str(tiny_gguf), device="cpu")
    with pytest.raises(BonitoError, match="n_threads must be at least 1, got 0"):
        LlamaCppEngine(str(tiny_gguf), n_threads=0)
    with pytest.raises(BonitoError, match="cache_type must be f32 or f16, got 'q8_0'"):
        LlamaCppEngine(str(tiny_gguf), cache_type="q8_0")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(BonitoError, match="llama.cpp could not load"):
        LlamaCppEngine(str(broken))


@pytest.mark.skipif(HAS_LLAMA, reason="llama-cpp-python is installed")
def test_without_the_extra_the_error_says_how_to_install(tmp_path):
    with pytest.raises(BonitoError, match=r"pip install 'bonito\[llamacpp\]'"):
        LlamaCppEngine(str(tmp_path / "tiny.gguf"))
