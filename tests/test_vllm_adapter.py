"""The vLLM adapter's own logic (version guard, options, sampling, finish reasons) against a
small stand-in for the `vllm` module: its LLM takes only the keyword arguments vLLM's EngineArgs
has (anything else is a TypeError, as in vLLM) and answers with canned RequestOutputs. The real
vLLM runs in the tests marked `vllm`."""

import sys
import types
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from types import SimpleNamespace

import pytest
import torch

from bonito import Bonito, BonitoError, SamplingParams
from bonito.engines import check_sampling, load_engine
from bonito.engines.base import Completion, Failure
from bonito.engines.vllm import vllm_sampling_kwargs


@dataclass
class FakeSamplingParams:
    """Some of vllm.SamplingParams' fields, with vLLM's defaults."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    min_tokens: int = 0
    max_tokens: int | None = 16
    output_text_buffer_length: int = 0
    _all_stop_token_ids: set = field(default_factory=set)


class FakeLLM:
    """vllm.LLM's keyword arguments (a few), the last instance kept; generate answers each
    prompt with n one-token samples, finishing as `finish_reasons` says (default "stop")."""

    last = None
    finish_reasons: dict[str, str] = {}

    def __init__(self, model, *, dtype="auto", max_model_len=None, enforce_eager=False):
        self.model, self.dtype, self.calls = model, dtype, []
        FakeLLM.last = self

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append(params)
        return [
            SimpleNamespace(
                prompt_token_ids=[1, 2, 3],
                outputs=[
                    SimpleNamespace(
                        text="x", token_ids=[9], finish_reason=self.finish_reasons.get(p, "stop")
                    )
                    for _ in range(sp.n)
                ],
            )
            for p, sp in zip(prompts, params, strict=True)
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` gives the stand-in (version 0.32.0 unless a test changes it)."""
    module = types.ModuleType("vllm")
    module.__spec__ = ModuleSpec("vllm", None)
    module.__version__ = "0.32.0"
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    platforms = types.ModuleType("vllm.platforms")  # a GPU build's
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setattr(FakeLLM, "last", None)
    monkeypatch.setattr(FakeLLM, "finish_reasons", {})
    return module


@pytest.mark.parametrize("version", ["0.6.6.post1", "0.8.5", "0.19.0"])
def test_a_vllm_too_old_for_transformers_5_is_refused_in_one_sentence(
    fake_vllm, tiny_model, version
):
    fake_vllm.__version__ = version
    with pytest.raises(BonitoError) as error:
        load_engine(str(tiny_model), "vllm")
    message = str(error.value)
    assert message.startswith(f"vLLM {version} cannot run beside transformers 5")
    assert (
        "pip install -U 'bonito[vllm]'" in message
        and 'use engine="openai" (--engine openai).' in message
    )
    assert message.count(". ") == 0 and "\n" not in message
    assert FakeLLM.last is None  # refused before loading


@pytest.mark.parametrize("version", ["0.19.1", "0.32.0+cpu", "0.34.0"])
def test_vllm_from_0_19_1_loads(fake_vllm, tiny_model, version):
    fake_vllm.__version__ = version
    engine = load_engine(str(tiny_model), "vllm", dtype="float32")
    assert FakeLLM.last.model == str(tiny_model) and FakeLLM.last.dtype == "float32"
    assert engine.llm is FakeLLM.last


def test_a_vllm_that_fails_to_import_is_not_called_missing(tmp_path, monkeypatch, tiny_model):
    broken = tmp_path / "vllm"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise ImportError('libcudart.so.12: cannot open shared object file')\n"
    )
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BonitoError) as error:
        load_engine(str(tiny_model), "vllm")
    message = str(error.value)
    assert "not installed" not in message
    assert message.startswith("vLLM is installed but fails to import (ImportError: libcudart")
    assert 'engine="transformers" (--engine transformers)' in message


def test_an_engine_vllm_cannot_start_is_one_sentence(fake_vllm, tiny_model, monkeypatch):
    """On vLLM's CPU build the default memory share is most of the RAM; on a busy machine its
    engine core then fails to start with a RuntimeError."""

    def fails(*args, **kwargs):
        raise RuntimeError("Engine core initialization failed. See root cause above.")

    monkeypatch.setattr(fake_vllm, "LLM", fails)
    with pytest.raises(BonitoError) as error:
        load_engine(str(tiny_model), "vllm")
    assert str(error.value) == (
        f"vLLM could not start its engine for '{tiny_model}' (Engine core initialization "
        "failed. See root cause above.): if memory ran short, give it a share it can have "
        "(engine argument gpu_memory_utilization, or kv_cache_memory_bytes), or use the "
        "transformers engine."
    )


def test_transformers_options_under_auto_do_not_reach_vllm(fake_vllm, tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto picks vLLM
    with pytest.raises(BonitoError) as error:
        load_engine(str(tiny_model), "auto", batch_size=8, decoder="graphs", dtype="float32")
    assert str(error.value) == (
        "batch_size, decoder belong to the transformers engine, and vLLM does not take them: "
        'leave them out, or use engine="transformers" (--engine transformers).'
    )
    assert FakeLLM.last is None


@pytest.mark.parametrize(
    "sampling, message",
    [
        (SamplingParams(n=2, temperature=0), "vLLM samples greedily .* n is 2"),
        (SamplingParams(temperature=2.5), "vLLM takes a temperature up to 2, got 2.5"),
    ],
)
def test_sampling_vllm_refuses_is_refused_before_anything_loads(
    sampling, message, tiny_model, tmp_path, capsys, monkeypatch
):
    from helpers import run_cli

    (tmp_path / "p.txt").write_text("A short passage about rivers and lakes.\n")
    args = ["generate", tmp_path / "p.txt", "-o", tmp_path / "run", "-t", "ynqa"]
    args += ["--model", str(tiny_model)]
    args += ["--engine", "vllm", "--n", sampling.n, "--temperature", sampling.temperature]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before reading, let alone loading
    with pytest.raises(BonitoError, match=message):
        check_sampling("vllm", sampling)
    check_sampling("transformers", sampling)  # the transformers engine takes both


def test_a_vllm_sampling_params_keeps_every_setting(fake_vllm, tiny_model):
    theirs = FakeSamplingParams(
        n=2, temperature=0.7, top_k=5, repetition_penalty=1.2, stop=["\n\n"],
        stop_token_ids=[7], min_tokens=3, max_tokens=64, output_text_buffer_length=1,
    )  # fmt: skip
    ours = SamplingParams.coerce(theirs)
    assert ours.extra == {
        "top_k": 5,
        "repetition_penalty": 1.2,
        "stop_token_ids": [7],
        "min_tokens": 3,
    }
    assert (ours.n, ours.temperature, ours.max_tokens, ours.stop) == (2, 0.7, 64, ("\n\n",))
    engine = load_engine(str(tiny_model), "vllm")
    [group] = engine.generate(["a", "b"], ours, seeds=[11, 12])
    sent = FakeLLM.last.calls[0]
    assert [p.seed for p in sent] == [11, 12]
    for params in sent:
        assert (params.top_k, params.repetition_penalty, params.min_tokens) == (5, 1.2, 3)
        assert params.stop_token_ids == [7] and params.stop == ["\n\n"] and params.n == 2
    assert vllm_sampling_kwargs(SamplingParams(), None)["stop"] is None
    assert "extra" not in SamplingParams().to_dict() and ours.to_dict()["extra"]["top_k"] == 5


def test_settings_an_engine_cannot_honour_are_refused_by_name(tiny_model):
    theirs = FakeSamplingParams(temperature=0.5, top_k=5, min_tokens=3)
    bonito = Bonito(str(tiny_model), engine="transformers")
    with pytest.raises(BonitoError) as error:
        bonito.generate_tasks(["A passage about rivers."], "", "ynqa", theirs)
    assert str(error.value) == (
        "The transformers engine cannot honour the sampling setting(s) min_tokens, top_k; "
        "leave them at vLLM's defaults, or use engine='vllm' or a vLLM server (engine='openai')."
    )
    plain = FakeSamplingParams(temperature=0.5, max_tokens=4, seed=1)  # nothing beyond ours
    assert len(bonito.generate_tasks(["A passage about rivers."], "", "ynqa", plain)) <= 1


@pytest.mark.parametrize("reason", ["error", "abort"])
def test_requests_vllm_did_not_complete_are_failures(fake_vllm, tiny_model, reason):
    FakeLLM.finish_reasons = {"b": reason}
    engine = load_engine(str(tiny_model), "vllm")
    [group] = engine.generate(["a", "b", "c"], SamplingParams(n=2, max_tokens=4), [1, 2, 3])
    results = dict(group)
    assert results[1] == Failure(f"vLLM ended a sample with finish reason '{reason}'")
    assert results[0] == [Completion("x", "stop", 3, 1)] * 2 == results[2]
