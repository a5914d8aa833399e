"""Convert a Llama- or Mistral-architecture Hugging Face model folder to one GGUF file for
llama.cpp (`--engine llamacpp`), keeping the tokenizer exact for bonito prompts.

    python scripts/convert_to_gguf.py MODEL_DIR OUT.gguf [--outtype auto|f32|f16|bf16]

Made for `bonito tiny-model`'s generator, whose byte-level BPE keeps the bonito markers whole
with its own pre-tokenizer regex. No llama.cpp pre-tokenizer has that regex, so the file says
"gpt-2" (the same regex without the markers) and flags each marker token as user-defined: llama.cpp
splits user-defined tokens out of the text before pre-tokenizing, which keeps them whole too.
Prompts then get the token ids the Hugging Face tokenizer gives (tests/test_llamacpp.py checks
this on real passages). It also converts GPT-2- and Llama-3-style byte-level BPE tokenizers and
SentencePiece-style ones (Mistral, Llama 2: BPE with byte fallback in tokenizer.json). Anything
else (rope scaling, biases, other pre-tokenizers): use llama.cpp's convert_hf_to_gguf.py.

Needs `gguf` (in `bonito[llamacpp]`), torch, safetensors and transformers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MARKED = re.compile(
    r" \?\(\?:(?P<markers>.+?)\)\|'s\|'t\|'re\|'ve\|'m\|'ll\|'d\| \?\\p\{L\}\+\| \?\\p\{N\}\+"
    r"\| \?\(\?:\(\?!(?P=markers)\)\[\^\\s\\p\{L\}\\p\{N\}\]\)\+\|\\s\+\(\?!\\S\)\|\\s\+"
)
"""bonito's tiny-model pattern: GPT-2's, with `markers` (escaped, |-separated) kept whole."""

ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM"}
LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


class ConversionError(Exception):
    """The folder is not something this script converts; the message says what to do."""


def unescape_markers(alternation: str) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", m) for m in re.split(r"(?<!\\)\|", alternation)]


def byte_level_pre(tokenizer_json: dict) -> tuple[str, list[str]]:
    """llama.cpp's pre-tokenizer name for a byte-level BPE, and the marker strings to keep whole
    (empty unless it is bonito's tiny-model pattern)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    patterns = [
        s["pattern"]["Regex"]
        for s in steps
        if s.get("type") == "Split" and "Regex" in s.get("pattern", {})
    ]
    levels = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(levels) == 1 and levels[0].get("add_prefix_space"):
        patterns = []  # llama.cpp adds no prefix space
    elif not patterns and len(steps) == 1 and levels and levels[0].get("use_regex", True):
        return "gpt-2", []  # ByteLevel's own regex is GPT-2's
    if len(patterns) == 1 and len(levels) == 1 and not levels[0].get("use_regex", True):
        if patterns[0] == GPT2_PATTERN:
            return "gpt-2", []
        if patterns[0] == LLAMA3_PATTERN:
            return "llama-bpe", []
        marked = MARKED.fullmatch(patterns[0])
        if marked:
            return "gpt-2", unescape_markers(marked["markers"])
    raise ConversionError(
        "The tokenizer's pre-tokenizer is not one this script knows (GPT-2's, Llama 3's or "
        "bonito's tiny model's); convert this model with llama.cpp's convert_hf_to_gguf.py."
    )


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, reversed: the character a byte-level token uses -> byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def vocab(model_dir: Path, n_vocab: int) -> tuple[str, str | None, list, list, list, list[str]]:
    """(tokenizer model, pre-tokenizer, tokens, scores, token types, merges) as GGUF stores them."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(
            f"{model_dir} has no tokenizer.json; convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    data = json.loads(path.read_text("utf-8"))
    bpe = data["model"]
    if bpe.get("type") != "BPE":
        raise ConversionError(
            f"Only BPE tokenizers are converted here, not {bpe.get('type')}; use llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    ids = {**bpe["vocab"], **{t["content"]: t["id"] for t in data.get("added_tokens", [])}}
    special = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    added = {t["id"] for t in data.get("added_tokens", []) if not t.get("special")}
    texts = {i: t for t, i in ids.items()}
    if len(texts) > n_vocab:
        raise ConversionError(f"The tokenizer has {len(texts)} tokens, the model {n_vocab}.")
    tokens, scores, types = [], [], []
    if bpe.get("byte_fallback"):  # SentencePiece-style (Mistral, Llama 2): "llama" in GGUF
        kind, pre = "llama", None
        rank: dict[str, int] = {}
        for r, merge in enumerate(merges):
            rank.setdefault(merge.replace(" ", ""), r)
        for i in range(n_vocab):
            text = texts.get(i, f"[PAD{i}]")
            tokens.append(text)
            scores.append(-float(rank.get(text, 0)) if i not in special else 0.0)
            if i not in texts:
                types.append(gguf.TokenType.UNUSED)
            elif i in special:
                types.append(gguf.TokenType.CONTROL)
            elif i in added:
                types.append(gguf.TokenType.USER_DEFINED)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                types.append(gguf.TokenType.BYTE)
            else:
                types.append(gguf.TokenType.NORMAL)
        return kind, pre, tokens, scores, types, []
    pre, markers = byte_level_pre(data)
    decode = byte_decoder()
    for i in range(n_vocab):
        text = texts.get(i, f"[PAD{i}]")
        raw = text if i in special or i in added else None
        if raw is None and all(c in decode for c in text):
            raw = bytes(decode[c] for c in text).decode("utf-8", errors="replace")
        if i not in texts:
            kind = gguf.TokenType.UNUSED
        elif i in special:
            kind = gguf.TokenType.CONTROL
        elif i in added or (raw is not None and raw.lstrip(" ") in markers and raw.count(" ") <= 1):
            # User-defined tokens are stored as plain text and split out before pre-tokenizing.
            kind, text = gguf.TokenType.USER_DEFINED, raw
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(text)
        scores.append(0.0)
        types.append(kind)
    missing = [m for m in markers if m not in tokens]
    if missing:
        raise ConversionError(
            f"The markers {missing} are not single tokens, so llama.cpp would split them "
            "differently from the Hugging Face tokenizer."
        )
    return "gpt2", pre, tokens, scores, types, merges


def special_tokens(model_dir: Path) -> tuple[dict[str, int], bool, bool]:
    """Special token ids, and whether the tokenizer adds BOS / EOS (asked of the tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    found = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    sample = tokenizer("a").input_ids
    add_bos = tokenizer.bos_token_id is not None and sample[:1] == [tokenizer.bos_token_id]
    add_eos = tokenizer.eos_token_id is not None and sample[-1:] == [tokenizer.eos_token_id]
    return {k: v for k, v in found.items() if v is not None}, add_bos, add_eos


def checkpoint(model_dir: Path) -> Iterator[tuple[str, object]]:
    """(name, torch tensor) for every weight, one at a time (safetensors, else PyTorch bins)."""
    import torch
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        for file in files:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        return
    files = sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{model_dir} has no *.safetensors or pytorch_model*.bin weights.")
    for file in files:
        yield from torch.load(file, map_location="cpu", weights_only=True).items()


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Q/K rows reordered from Hugging Face's rotate-half rotary layout to llama.cpp's
    interleaved one (as convert_hf_to_gguf.py does)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def convert(model_dir: str | Path, out: str | Path, outtype: str = "auto") -> Path:
    """Write `model_dir` (a Llama/Mistral-architecture folder) as one GGUF file at `out`."""
    import gguf
    import torch

    model_dir, out = Path(model_dir), Path(out)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{model_dir} is not a model folder: it has no config.json.")
    config = json.loads(config_path.read_text("utf-8"))
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise ConversionError(
            f"{architecture} is not a Llama/Mistral architecture; use llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConversionError(
            f"Rope scaling '{rope.get('rope_type', rope.get('type'))}' is not converted here; "
            "use llama.cpp's convert_hf_to_gguf.py."
        )
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    n_vocab = config["vocab_size"]

    stored = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    if outtype == "auto":
        outtype = {"float16": "f16", "bfloat16": "bf16"}.get(stored, "f32")
    qtype, file_type = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    }[outtype]

    kind, pre, tokens, scores, types, merges = vocab(model_dir, n_vocab)
    specials, add_bos, add_eos = special_tokens(model_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(model_dir.name)
    writer.add_file_type(file_type)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_vocab_size(n_vocab)

    writer.add_tokenizer_model(kind)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    for name, token_id in specials.items():
        getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)

    seen = set()
    for name, tensor in checkpoint(model_dir):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        layer = LAYER.fullmatch(name)
        if layer and layer[2] in LAYER_TENSORS:
            new = f"blk.{layer[1]}.{LAYER_TENSORS[layer[2]]}.weight"
        elif name in TOP_TENSORS:
            new = TOP_TENSORS[name]
        else:
            raise ConversionError(
                f"Unexpected weight {name}; use llama.cpp's convert_hf_to_gguf.py."
            )
        if new == "output.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp uses the token embeddings when there is no output matrix
        data = tensor.to(torch.float32).numpy()
        if new.endswith("attn_q.weight"):
            data = permute(data, heads)
        elif new.endswith("attn_k.weight"):
            data = permute(data, kv_heads)
        if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:  # norms stay f32
            writer.add_tensor(new, data)
        else:
            writer.add_tensor(new, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        seen.add(new)
    if "token_embd.weight" not in seen:
        raise ConversionError(f"{model_dir} has no model.embed_tokens.weight.")

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a Hugging Face model folder (config.json, weights)")
    parser.add_argument("out", help="the .gguf file to write")
    parser.add_argument(
        "--outtype",
        choices=["auto", "f32", "f16", "bf16"],
        default="auto",
        help="weight type; auto keeps the checkpoint's (f32 stays f32)",
    )
    args = parser.parse_args(argv)
    try:
        import gguf  # noqa: F401
    except ImportError:
        print("error: needs the gguf package: pip install 'bonito[llamacpp]'", file=sys.stderr)
        return 1
    try:
        path = convert(args.model_dir, args.out, args.outtype)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
