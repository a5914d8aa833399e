from dataclasses import dataclass, fields

import pytest

from bonito import BonitoError, SamplingParams
from bonito.engines.vllm import vllm_sampling_kwargs


def test_defaults_are_the_model_cards():
    s = SamplingParams()
    assert (s.n, s.temperature, s.top_p, s.max_tokens) == (1, 0.5, 0.95, 256)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be a whole number of at least 1, got 0"),
        ({"n": 0}, "n must be a whole number of at least 1, got 0"),
        ({"temperature": -0.1}, "temperature must be 0 \\(greedy\\) or more, got -0.1"),
        ({"top_p": 0}, "top_p must be in"),
        ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
        ({"temperature": float("inf")}, "temperature must be a finite number, got inf"),
        ({"top_p": float("nan")}, "top_p must be a finite number, got nan"),
        ({"temperature": "0.5"}, "temperature must be a finite number, got '0.5'"),
        ({"stop": ["", "x"]}, "stop strings must not be empty"),
    ],
)
def test_bad_values_name_the_value(kwargs, message):
    with pytest.raises(BonitoError, match=message):
        SamplingParams(**kwargs)


def test_coerce_dict_and_unknown_keys():
    assert SamplingParams.coerce({"n": 3, "stop": "x"}) == SamplingParams(n=3, stop=("x",))
    with pytest.raises(BonitoError, match="Unknown sampling setting\\(s\\) best_off"):
        SamplingParams.coerce({"best_off": 2})
    with pytest.raises(BonitoError, match="got int"):
        SamplingParams.coerce(3)


@dataclass
class VLLMLikeSamplingParams:
    """The attributes vllm.SamplingParams has (vLLM not installable here)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] | None = None
    max_tokens: int | None = 16


def test_coerce_from_a_vllm_style_object():
    theirs = VLLMLikeSamplingParams(
        n=2, temperature=0.7, top_p=0.9, max_tokens=64, seed=3, stop=["\n\n"]
    )
    assert SamplingParams.coerce(theirs) == SamplingParams(
        n=2, temperature=0.7, top_p=0.9, max_tokens=64, seed=3, stop=("\n\n",)
    )
    assert SamplingParams.coerce(VLLMLikeSamplingParams(max_tokens=None)).max_tokens == 256


def test_mapping_to_vllm_round_trips():
    ours = SamplingParams(n=4, temperature=0.3, top_p=0.8, max_tokens=99, seed=7, stop=("a", "b"))
    kwargs = vllm_sampling_kwargs(ours, seed=7)
    assert kwargs == {
        "n": 4,
        "temperature": 0.3,
        "top_p": 0.8,
        "max_tokens": 99,
        "seed": 7,
        "stop": ["a", "b"],
    }
    assert set(kwargs) <= {f.name for f in fields(VLLMLikeSamplingParams)}
    assert SamplingParams.coerce(VLLMLikeSamplingParams(**kwargs)) == ours
    assert vllm_sampling_kwargs(SamplingParams(), seed=None)["stop"] is None


@pytest.mark.vllm
def test_real_vllm_sampling_params_accepts_the_mapping():
    vllm = pytest.importorskip(
        "vllm", reason="vLLM is not installed here: `make test` runs this test in .venv-vllm"
    )
    ours = SamplingParams(n=2, temperature=0.7, seed=1, stop=("x",))
    theirs = vllm.SamplingParams(**vllm_sampling_kwargs(ours, seed=1))
    assert SamplingParams.coerce(theirs) == ours


def test_a_real_vllm_sampling_params_keeps_its_other_settings():
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (it needs Linux with CUDA)")
    theirs = vllm.SamplingParams(
        temperature=0.7, top_k=5, stop=["\n\n"], stop_token_ids=[7], min_tokens=3, max_tokens=9
    )
    ours = SamplingParams.coerce(theirs)
    assert ours.extra == {"top_k": 5, "stop_token_ids": [7], "min_tokens": 3}
    again = vllm.SamplingParams(**vllm_sampling_kwargs(ours, seed=1))
    assert (again.top_k, again.stop_token_ids, again.min_tokens, again.stop) == (
        5,
        [7],
        3,
        ["\n\n"],
    )
    assert SamplingParams.coerce(vllm.SamplingParams(temperature=0)).extra == {}
