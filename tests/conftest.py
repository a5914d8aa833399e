"""Shared fixtures. The suite runs offline: no hub is reachable from CI, and without these a
failed hub lookup retries for half a minute before it fails."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The offline tiny bonito generator, built once per test session."""
    from bonito.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-bonito"))
