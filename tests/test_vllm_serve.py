"""The openai engine against a real `vllm serve` (vLLM's CPU build, in .venv-vllm: `make
test`) on 127.0.0.1 serving the tiny generator: raw prompts (the greedy run of the in-process
transformers engine, BOS once), n samples in one request, per-request seeds, concurrent
requests, and a server killed and restarted mid-run with nothing lost, repeated or different."""

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test` runs these tests in .venv-vllm"
)

from helpers import completions_of, counts_of, run_config, run_through_a_crash  # noqa: E402
from servers import FaultProxy  # noqa: E402

from bonito import SamplingParams, build_prompt  # noqa: E402
from bonito.engines import generate_all, load_engine  # noqa: E402
from bonito.engines.openai import PROBE_PROMPT, OpenAIEngine  # noqa: E402
from bonito.engines.transformers import TransformersEngine  # noqa: E402
from bonito.runs.run import generate_run  # noqa: E402

SAMPLED = SamplingParams(n=2, temperature=0.5, max_tokens=24, seed=4)


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server


def test_greedy_run_through_vllm_serve_equals_the_in_process_run(
    server,
    tiny_model,
    numbered_passages,
    tmp_path,
):
    """Same completions (text, finish reason, token counts: BOS added once to the raw prompt)
    and the same tasks as the transformers engine in-process."""
    config = run_config(tiny_model, numbered_passages)
    local = generate_run(
        tmp_path / "local", config, lambda: TransformersEngine(str(tiny_model), device="cpu")
    )
    served = generate_run(
        tmp_path / "served",
        config,
        lambda: load_engine(str(tiny_model), "openai", base_url=server.url + "/v1"),
        engine_name="openai",
    )
    assert local.state == served.state == "finished"
    expected = completions_of(tmp_path / "local")
    assert len(expected) == 6 and completions_of(tmp_path / "served") == expected
    tasks = [(tmp_path / f / "tasks.jsonl").read_text() for f in ("local", "served")]
    assert tasks[0] == tasks[1]


def test_n_samples_in_one_request_with_the_prompts_own_seed(server, tiny_model):
    """vLLM honours n and seed: one request per prompt, its samples reproducible and distinct."""
    proxy = FaultProxy(server.url)
    try:
        engine = load_engine(str(tiny_model), "openai", base_url=proxy.url)
        assert not engine.split_n
        prompts = [build_prompt("Glaciers move slowly downhill.", t) for t in ("ynqa", "nli")]
        sampling = SamplingParams(n=3, temperature=1.0, max_tokens=16)
        first = generate_all(engine, prompts, sampling, seeds=[11, 12])
        again = generate_all(engine, prompts, sampling, seeds=[11, 12])
        other = generate_all(engine, prompts, sampling, seeds=[13, 14])
    finally:
        proxy.close()
    assert [len(r) for r in first] == [3, 3] and again == first and other != first
    assert any(len({c.text for c in r}) > 1 for r in first)
    sent = [(s.prompt, s.seed, s.n) for s in proxy.seen if s.prompt != PROBE_PROMPT]
    rounds = ((11, 12), (11, 12), (13, 14))
    expected = [(p, s, 3) for seeds in rounds for p, s in zip(prompts, seeds, strict=True)]
    assert sorted(sent) == sorted(expected)


def test_a_server_killed_mid_run_and_restarted_changes_nothing(
    server,
    tiny_model,
    numbered_passages,
    tmp_path,
):
    """Seeded samples, four requests at a time: the run through a server SIGKILLed after three
    requests and started again equals a run never interrupted, one completion per sample."""
    config = run_config(tiny_model, numbered_passages, SAMPLED, 12)
    whole, folder = tmp_path / "whole", tmp_path / "killed"

    def engine():
        return OpenAIEngine(
            str(tiny_model),
            base_url=server.url,
            concurrency=4,
            max_retries=200,
            backoff=0.2,
            max_backoff=1.0,
        )

    assert generate_run(whole, config, engine, engine_name="openai").state == "finished"
    engines = []

    def load():
        engines.append(engine())
        return engines[0]

    outcome, at_kill = run_through_a_crash(server, folder, config, load, timeout=600)
    assert outcome.state == "finished"
    assert 3 <= at_kill < 12
    assert counts_of(folder) == (12, 0, 24, 24)
    assert completions_of(folder) == completions_of(whole)
    assert engines[0].stats.retries["connection"] > 0 and engines[0].stats.failed == 0
