"""Shared fixtures. The suite runs offline: no hub is reachable from CI, and without these a
failed hub lookup retries for half a minute before it fails."""

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
from helpers import EXAMPLES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The offline tiny bonito generator, built once per test session, or the one already built
    in BONITO_TEST_TINY_MODEL (a fast loop while working; CI always builds it)."""
    from bonito.train.tiny_model import build_tiny_model

    built = os.environ.get("BONITO_TEST_TINY_MODEL")
    if built and (Path(built) / "config.json").exists():
        return Path(built).resolve()  # tests change directory
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bonito"))


@pytest.fixture
def browser():
    """A headless Debian chromium driven through chromedriver, logging the console (tests mark
    themselves needs_selenium and needs_chromium from helpers)."""
    from helpers import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        chromium = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        yield chromium
        chromium.quit()


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory) -> Path:
    """A model folder with a tokenizer and a config but no weights, for runs whose engine is
    scripted (fake_engine.scripted_engines): built in a second, loads no model."""
    from fake_engine import write_tokenizer_model

    return write_tokenizer_model(tmp_path_factory.mktemp("tokenizer-model")).resolve()


@pytest.fixture
def scripted():
    """Every engine loaded in the test is a ScriptedEngine answering `plausible`: the list of
    those loaded."""
    from fake_engine import scripted_engines

    with scripted_engines() as loaded:
        yield loaded


HEAVY_FIXTURES = {"tiny_model", "fresh_base", "trained"}
"""Fixtures that build or load a model: a test using one, even through another fixture, is
marked `heavy` (as are tests that start a process or work through a large corpus), and
`make test-fast` leaves it out."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


# What more than one test module uses (the engine contract and each engine's own tests), made
# once per session; each skips, saying why, where its package is missing. (vLLM is loaded per
# module instead: two at once would hold too much memory.)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    """The session's tiny generator as one f32 GGUF file, written by the repository's script."""
    from servers import convert_to_gguf

    pytest.importorskip("gguf", reason="gguf is not installed (pip install 'bonito[llamacpp]')")
    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-bonito.gguf"
    result = convert_to_gguf(tiny_model, out, "--outtype", "f32")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def llama_server(request, tmp_path_factory):
    """llama-cpp-python's server with the session's tiny GGUF."""
    from servers import CONVERT_SCRIPT, llama_cpp_serve, llama_cpp_server_missing

    missing = llama_cpp_server_missing(CONVERT_SCRIPT)
    if missing:
        pytest.skip(missing)
    gguf = request.getfixturevalue("tiny_gguf")
    process = llama_cpp_serve(gguf, tmp_path_factory.mktemp("llama-server") / "server.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def numbered_passages(tmp_path_factory) -> Path:
    """examples/passages.jsonl with each text made distinct ("Note i. ..."), as a JSONL file."""
    texts = [json.loads(line)["text"] for line in EXAMPLES.read_text().splitlines()]
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"Note {i}. {t}"}) + "\n" for i, t in enumerate(texts))
    )
    return path


@pytest.fixture(scope="session")
def vllm_bonito(tiny_model):
    """`Bonito` on vLLM in this process, loaded once for every vllm test module (tests marked
    `vllm`, run in .venv-vllm)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (the vllm extra)")
    from servers import VLLM_ARGS

    from bonito import Bonito

    return Bonito(str(tiny_model), engine="vllm", **VLLM_ARGS)


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """`vllm serve` with the tiny generator, started once for every vllm test module."""
    from servers import VLLM_SERVE_OPTIONS, vllm_serve

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    process = vllm_serve(tiny_model, log, *VLLM_SERVE_OPTIONS)
    process.start(timeout=600)
    yield process
    process.stop()
