"""Engines: one small protocol, one module per backend, optional backends imported lazily."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from bonito.engines.base import Completion, Engine, Failure, Finished, generate_all
from bonito.errors import BonitoError

ENGINES = ("auto", "transformers", "vllm", "openai", "llamacpp")
log = logging.getLogger("bonito")


def choose_engine(engine: str, model: str = "") -> str:
    """Resolve "auto": vLLM when importable and a CUDA device is present and the model is not a
    LoRA adapter folder, else transformers ("openai", a server, and "llamacpp", a .gguf file,
    are only ever chosen by name)."""
    if engine not in ENGINES:
        raise BonitoError(f"Unknown engine '{engine}'; choose one of {', '.join(ENGINES)}.")
    if engine != "auto":
        return engine
    import torch

    from bonito.engines.models import is_adapter

    has_vllm = importlib.util.find_spec("vllm") is not None
    adapter = bool(model) and is_adapter(model)
    chosen = "vllm" if has_vllm and torch.cuda.is_available() and not adapter else "transformers"
    why = (
        "vLLM and a CUDA device found"
        if chosen == "vllm"
        else "a LoRA adapter"
        if adapter and has_vllm
        else ("no CUDA device" if has_vllm else "vLLM not installed")
    )
    # worth a line only where vLLM is installed but not used
    level = logging.INFO if has_vllm and chosen != "vllm" else logging.DEBUG
    log.log(level, "engine auto -> %s (%s)", chosen, why)
    return chosen


def load_engine(model: str, engine: str = "auto", **engine_kwargs: Any) -> Engine:
    """Load `model` with the named engine; engine_kwargs go to that backend unchanged. For
    "openai", `model` is the model the server is asked for unless served_model is given, and
    base_url is required."""
    chosen = choose_engine(engine, model)
    if chosen == "openai":
        from bonito.engines.openai import OpenAIEngine

        if "base_url" not in engine_kwargs:
            raise BonitoError(
                "The openai engine needs the server's address: --base-url, such as "
                "http://127.0.0.1:8000/v1."
            )
        return OpenAIEngine(model, **engine_kwargs)
    if chosen == "llamacpp":
        from bonito.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(model, **engine_kwargs)
    if chosen == "vllm":
        from bonito.engines.vllm import VLLMEngine

        return VLLMEngine(model, **engine_kwargs)
    from bonito.engines.transformers import TransformersEngine

    return TransformersEngine(model, **engine_kwargs)


__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "Failure",
    "Finished",
    "choose_engine",
    "generate_all",
    "load_engine",
]
