"""vLLM in-process on the tiny generator, with the community CPU build of vLLM (`make test` runs
these in .venv-vllm): the drop-in API and `--engine vllm` load it, greedy decoding writes what the
transformers engine writes, one BOS per prompt, engine options passed through, and a killed run
that resumes (the engine contract, test_engine_contract.py, covers the rest). One `vllm.LLM` for
the module: loading one takes half a minute."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test` runs these tests in .venv-vllm"
)

from helpers import done_requests, query, run_cli, tasks_of, wait_for  # noqa: E402
from servers import VLLM_ARGS  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from bonito import BonitoError, SamplingParams, build_prompt, parse_task  # noqa: E402
from bonito.engines import choose_engine, generate_all, load_engine  # noqa: E402
from bonito.engines.transformers import TransformersEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "passages.jsonl"
PASSAGES = [json.loads(line)["text"] for line in EXAMPLES.read_text().splitlines()]
PROMPTS = [build_prompt(p, t) for p in PASSAGES[:6] for t in ("ynqa", "exqa")]


@pytest.fixture(scope="module")
def bonito(vllm_bonito):
    return vllm_bonito


@pytest.fixture(scope="module")
def engine(bonito):
    return bonito.engine


@pytest.fixture(scope="module")
def transformers_engine(tiny_model):
    return TransformersEngine(str(tiny_model), device="cpu")


def test_bonito_loads_vllm_with_the_options_given(bonito, tiny_model):
    assert bonito.engine.name == "vllm" and bonito.engine.model == str(tiny_model)
    config = bonito.engine.llm.llm_engine.vllm_config
    assert config.model_config.max_model_len == 1024
    assert str(config.model_config.dtype) == "torch.float32"
    assert config.model_config.enforce_eager is True
    assert config.cache_config.gpu_memory_utilization == 0.5
    assert config.cache_config.kv_cache_memory_bytes == 1 << 28
    assert config.scheduler_config.enable_chunked_prefill is False
    tasks = bonito.generate_tasks(
        PASSAGES[:4], "text", "nli", sampling_params={"max_tokens": 96, "seed": 1}
    )
    assert len(tasks) >= 2 and set(tasks.column_names) == {"input", "output"}


def test_greedy_text_and_token_counts_equal_the_transformers_engine(engine, transformers_engine):
    """float32 on both sides: the same text, finish reasons and token counts, hence the same
    tasks (the prompt tokens show that vLLM adds BOS once, as transformers does). Where the
    tokens are bytes that make no character, vLLM's detokenizer leaves them out and
    transformers writes U+FFFD: the texts are compared without it."""
    prompts = [build_prompt(p, t) for p in PASSAGES for t in ("ynqa", "exqa", "nli")]
    sampling = SamplingParams(temperature=0, max_tokens=96)
    ours = generate_all(engine, prompts, sampling)
    theirs = generate_all(transformers_engine, prompts, sampling)
    assert [o[0].text for o in ours] == [t[0].text.replace("\ufffd", "") for t in theirs]
    assert [(o[0].finish_reason, o[0].prompt_tokens, o[0].completion_tokens) for o in ours] == [
        (t[0].finish_reason, t[0].prompt_tokens, t[0].completion_tokens) for t in theirs
    ]
    contexts = [p for p in PASSAGES for _ in range(3)]
    tasks = [parse_task(o[0].text, c) for o, c in zip(ours, contexts, strict=True)]
    assert sum(type(t).__name__ == "Task" for t in tasks) >= len(tasks) // 2


def test_seeded_prompts_beyond_one_batch_of_tokens(engine):
    """On vLLM's CPU backend the engine turns chunked prefill off (its sampler fails on a seeded
    prompt read in parts): more prompt tokens than one batch takes (4,096) are generated."""
    assert engine.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill is False
    prompts = [build_prompt(f"Note {i}. {p}", "nli") for i in range(6) for p in PASSAGES]
    results = generate_all(engine, prompts, SamplingParams(max_tokens=4, seed=0))
    assert sum(r[0].prompt_tokens for r in results) > 4096
    assert len(results) == 72 and all(0 < r[0].completion_tokens <= 4 for r in results)


def test_one_bos_per_prompt(engine, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    results = engine.llm.generate(PROMPTS[:4], vllm.SamplingParams(max_tokens=1), use_tqdm=False)
    for prompt, result in zip(PROMPTS, results, strict=False):
        ids = list(result.prompt_token_ids)
        assert ids == tokenizer(prompt).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_auto_chooses_vllm_only_with_a_cuda_device(tiny_model, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="bonito"):
        assert choose_engine("auto", str(tiny_model)) == "transformers"
    assert "engine auto -> transformers (no CUDA device)" in caplog.text
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert choose_engine("auto", str(tiny_model)) == "vllm"


def test_an_option_vllm_refuses_is_one_sentence(tiny_model):
    with pytest.raises(BonitoError):
        load_engine(str(tiny_model), "vllm", **{**VLLM_ARGS, "quantization": "no-such-method"})


def generate_args(passages: Path, model: Path, out: Path) -> list[str]:
    engine_args = [a for k, v in VLLM_ARGS.items() for a in ("--engine-arg", f"{k}={v}")]
    return [
        "generate",
        str(passages),
        "-t",
        "ynqa",
        "-t",
        "exqa",
        "--model",
        str(model),
        "--engine",
        "vllm",
        "--max-tokens",
        "48",
        "--seed",
        "5",
        "--output",
        str(out),
        *engine_args,
    ]


def test_a_killed_run_resumes_with_nothing_lost_or_repeated(
    engine, tiny_model, tmp_path, capsys, monkeypatch
):
    """`bonito generate --engine vllm` in its own process, killed (SIGKILL) once some groups are
    saved, then the same command again: the completions and tasks of a run never interrupted.
    The command's second run and the uninterrupted one run in-process on the module's engine
    (each `vllm.LLM` loaded costs half a minute)."""
    passages = tmp_path / "passages.jsonl"
    passages.write_text(
        "".join(json.dumps({"text": f"Note {i}. {p}"}) + "\n" for i in range(3) for p in PASSAGES)
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def in_process(folder: Path) -> None:
        monkeypatch.setattr("bonito.engines.load_engine", lambda *args, **kwargs: engine)
        code, _, err = run_cli(generate_args(passages, tiny_model, folder), capsys, monkeypatch)
        monkeypatch.undo()
        assert code == 0, err

    in_process(whole)
    # small groups, each followed by a pause, so that the kill lands while the run goes on (a
    # loaded machine once saw all 72 saved between two looks)
    small_groups = (
        "import time, bonito.engines.vllm as v\n"
        "v.GROUP = 4\n"
        "generate = v.VLLMEngine.generate\n"
        "def paced(*args, **kwargs):\n"
        "    for group in generate(*args, **kwargs):\n"
        "        yield group\n"
        "        time.sleep(0.5)\n"
        "v.VLLMEngine.generate = paced\n"
        "from bonito.cli import main\n"
        "main()"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", small_groups, *generate_args(passages, tiny_model, killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # vLLM's engine processes die with it
    )
    try:
        wait_for(lambda: done_requests(killed) >= 8, timeout=300)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    at_kill = done_requests(killed)
    total = 2 * 3 * len(PASSAGES)
    assert 8 <= at_kill < total, at_kill

    in_process(killed)
    completions = (
        "SELECT request_id, sample, text, finish_reason, prompt_tokens, completion_tokens "
        "FROM completions ORDER BY request_id, sample"
    )
    assert len(query(whole, completions)) == total
    assert query(killed, completions) == query(whole, completions)
    assert tasks_of(killed) == tasks_of(whole)
    lines = [sorted((f / "tasks.jsonl").read_text().splitlines()) for f in (killed, whole)]
    assert lines[0] == lines[1]
