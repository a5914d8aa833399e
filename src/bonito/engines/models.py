"""Where a model comes from (local folder or hub), and one clear message when it fails to load."""

from __future__ import annotations

from pathlib import Path

from bonito.errors import BonitoError


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
    if not (path / "config.json").is_file():
        raise BonitoError(
            f"'{model}' is not a model: it has no config.json. Pass the folder that "
            "save_pretrained wrote (or `bonito tiny-model DIR` made), or a hub id."
        )


def model_load_error(model: str, error: Exception) -> BonitoError:
    """Turn a failed from_pretrained into one paragraph saying what failed and what to do."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return BonitoError(
        f"Could not load the model '{model}': {reason} "
        f"If it is a hub model, download it where there is internet access "
        f"(`hf download {model} --local-dir ./{model.split('/')[-1]}`, or `huggingface-cli "
        f"download` with older huggingface_hub) and pass that folder as the model; for a gated "
        f"model, accept its licence on the hub and log in with `hf auth login` first. "
        f"For an offline smoke test, `bonito tiny-model ./tiny-bonito` builds a small generator "
        f"in seconds."
    )
