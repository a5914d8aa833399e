"""Where a model comes from (local folder, LoRA adapter folder or hub), how it loads, and one
clear message when it fails to load."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from bonito.errors import BonitoError, first_line

DEFAULT_GENERATOR = "BatsResearch/bonito-v1"
"""The generator used unless another is named."""
ADAPTER_CONFIG = "adapter_config.json"
WINDOW_KEYS = ("max_position_embeddings", "n_positions", "seq_length")
"""Config fields that give a model's window, the longest prompt and completion it takes."""
DEVICES = "cpu, cuda, cuda:N or mps"
DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_device(device: str | None) -> str:
    """`device` checked against this machine and this PyTorch build (one sentence saying what to
    use instead); None: CUDA when there is a CUDA device, else the CPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise BonitoError(f"device (--device) {device} is not a device; use {DEVICES}.")
    if parsed.type == "cuda":
        check_cuda(device, parsed.index or 0)
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise BonitoError(f"device (--device) {device}: MPS is not available here; use cpu.")
    return device


def check_cuda(device: str, index: int) -> None:
    """Refuse a CUDA device this PyTorch build or this machine does not have."""
    import torch

    if not torch.backends.cuda.is_built():
        raise BonitoError(
            f"device (--device) {device}: this PyTorch has no CUDA (a CPU build); use cpu."
        )
    found = torch.cuda.device_count()
    if index >= found:
        instead = {0: "cpu", 1: "cuda:0"}.get(found, f"cuda:0 to cuda:{found - 1}")
        raise BonitoError(
            f"device (--device) {device}: this machine has no CUDA device {index}; use {instead}."
        )


def check_dtype(dtype: Any) -> None:
    """Refuse a dtype that is neither a torch dtype nor one of `DTYPES`."""
    import torch

    if not isinstance(dtype, torch.dtype) and dtype not in DTYPES:
        raise BonitoError(f"Unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}.")


def is_adapter(model: str) -> bool:
    """Whether `model` is a folder holding a LoRA adapter (what `bonito train` saves)."""
    return (Path(model).expanduser() / ADAPTER_CONFIG).is_file()


def check_model_path(model: str) -> None:
    """Fail early on a model given as a local path that is missing or holds no model."""
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") > 1
    if not looks_local:
        return
    if not path.exists():
        raise BonitoError(
            f"The model path '{model}' does not exist. Pass a folder with a saved model "
            "(config.json and weights) or a hub id such as BatsResearch/bonito-v1."
        )
    if not (path / "config.json").is_file() and not is_adapter(model):
        raise BonitoError(
            f"'{model}' is not a model: it has no config.json (nor {ADAPTER_CONFIG}). Pass the "
            "folder that save_pretrained or `bonito train` wrote (or `bonito tiny-model DIR` "
            "made), or a hub id."
        )


def quiet_transformers() -> None:
    """Switch off transformers' own progress bars (its "Loading weights" on every load), and
    keep the hub's download bars as they were: a long download still shows its progress."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging

    downloads_shown = not are_progress_bars_disabled()
    logging.disable_progress_bar()  # the hub's too
    if downloads_shown:
        enable_progress_bars()


def load_causal_lm(model: str, adapter: str | Path | None = None, **options: Any):
    """(model, tokenizer) through the normal from_pretrained path, `options` going to the model's
    from_pretrained. A LoRA adapter (`adapter`, or `model` itself when it is an adapter folder,
    on the base its adapter_config.json names) is merged in; the tokenizer saved with it, which
    may have gained a pad token, is used and the embeddings grow to match."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path(model)
    quiet_transformers()
    if adapter is None and is_adapter(model):
        adapter = model
    if adapter is not None and not is_adapter(str(adapter)):
        raise BonitoError(
            f"The adapter {adapter} has no {ADAPTER_CONFIG}; pass the folder `bonito train` or "
            "`bonito finetune` saved (or any PEFT adapter folder)."
        )
    try:
        if adapter is None:
            tokenizer = AutoTokenizer.from_pretrained(model)
            return AutoModelForCausalLM.from_pretrained(model, **options), tokenizer
        from peft import PeftConfig, PeftModel

        base = (
            model
            if adapter != model
            else PeftConfig.from_pretrained(adapter).base_model_name_or_path
        )
        has_tokenizer = (Path(adapter) / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base)
        lm = AutoModelForCausalLM.from_pretrained(base, **options)
    except (OSError, ValueError) as error:
        raise model_load_error(model, error) from error
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(lm, str(adapter)).merge_and_unload(), tokenizer


def model_load_error(model: str, error: Exception) -> BonitoError:
    """Turn a failed from_pretrained into one paragraph saying what failed and what to do."""
    reason = first_line(error)
    return BonitoError(
        f"Could not load the model '{model}': {reason} "
        f"If it is a hub model, download it where there is internet access "
        f"(`hf download {model} --local-dir ./{model.split('/')[-1]}`, or `huggingface-cli "
        f"download` with older huggingface_hub) and pass that folder as the model; for a gated "
        f"model, accept its licence on the hub and log in with `hf auth login` first. "
        f"For an offline smoke test, `bonito tiny-model ./tiny-bonito` builds a small generator "
        f"in seconds."
    )


def cache_keyword(lm: Any) -> str:
    """The name the model's forward takes its key/value cache by (and its output holds it
    by): `cache` from transformers 5.25 on (where `past_key_values` is an alias to go in 5.40),
    else `past_key_values`. A name the forward does not declare would vanish into its **kwargs,
    and the model would silently build a fresh cache at every step."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def config_window(config: Any) -> int | None:
    """The window (longest prompt and completion) a transformers config gives; None if none."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in WINDOW_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
