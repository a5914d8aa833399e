"""A copy circuit set by hand in the tiny generator's attention and kept through its training.

Extractive answers are copies of the passage, but a two-layer model trained for two minutes
does not learn to copy (induction heads need far more training than that). So the first query
head of each layer, and what it reads, are set by hand, and gradient masks keep them as set while
the rest trains:

- embeddings: dim 0 a constant, dims 1-32 a random code per token (attention matches on its
  first 14 dims), dims 33-64 left for the previous token's code, and one dim each marking
  `<|task|>`, `<|pipe|>`, the extractive task type's name, BOS, the prompt's own markers, and
  (at 0.1, as the tied embeddings read every dim out as a logit) tokens that continue a word;
- layer 0: query head 0 attends to the previous token and writes its code; query head 2 attends
  to `<|task|>` and `<|pipe|>`, marking the generated text and, apart, the answer; query head 3
  attends to the extractive name, marking extractive-QA prompts;
- layer 1, query head 0 (the induction head): in the answer of an extractive-QA prompt, attends
  to the position whose previous token is the current token, never in the generated text (so it
  cannot copy the model's own words into loops) nor on the prompt's markers; elsewhere it attends
  to BOS, which copies nothing. It writes that position's code, which the tied embeddings read
  out as that token, and whether that token continues a word (so the answer can end on a whole
  word). The answer's first token follows a line break, as the passage's first token does: the
  circuit proposes the passage's first words, which is what the tiny model's extractive question
  asks for.

The model stays a plain Mistral: every engine serves it. Needs rope_theta 1e6, or too few RoPE
pairs turn slowly enough to match tokens hundreds of positions apart."""

from __future__ import annotations

import math

import torch
from transformers import MistralForCausalLM, PreTrainedTokenizerBase

from bonito.prompt.format import CONTEXT, PIPE, TASK, TASKTYPE
from bonito.prompt.task_types import resolve_task_type

HEAD = 32
CONSTANT = 0.1
CODE = slice(1, 33)
MATCH = 16
PREVIOUS = 33
AFTER_TASK, TASK_MARK, EXTRACTIVE_MARK, EXTRACTIVE, BOS_MARK = 65, 66, 67, 68, 69
PIPE_MARK, AFTER_PIPE, NO_COPY, NEXT_CONTINUES, CONTINUES = 70, 71, 72, 73, 74
WIRED_DIMS = 75
"""Residual dims 0-74 belong to the circuit; 75-127 are the model's own."""
PREVIOUS_SCORE = 3.0
MARK_SCORE = 80.0
MATCH_SCORE = 80.0
PENALTY = 200.0
BOS_GATE = 200.0
COPY_STRENGTH = 8.0
FAST_PAIRS = range(4)
SLOW_PAIRS = range(8, 15)
MARK_PAIR = 15


def rms_into(model: MistralForCausalLM, layer: int, ids: torch.Tensor) -> float:
    """The mean root-mean-square of the residual entering `layer` on `ids`."""
    seen: list[torch.Tensor] = []
    norm = model.model.layers[layer].input_layernorm
    handle = norm.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    model(ids)
    handle.remove()
    return seen[0][0, 1:].pow(2).mean(-1).sqrt().mean().item()


def extractive_name_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The first token of the extractive task type's name, as the prompt writes it."""
    name = resolve_task_type("exqa").name
    return tokenizer(name, add_special_tokens=False).input_ids[0]


@torch.no_grad()
def wire(model: MistralForCausalLM, tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    """Set the circuit into a freshly initialised tiny Mistral (hidden 128, 4 heads of 32, 2 kv
    heads, 2 layers); `seed` draws the token codes."""
    generator = torch.Generator().manual_seed(seed)
    theta = model.config.rope_parameters["rope_theta"]
    frequency = theta ** -(torch.arange(0, HEAD, 2).double() / HEAD)
    embed = model.model.embed_tokens.weight
    vocab = embed.shape[0]
    halves = [torch.randn(vocab, MATCH, generator=generator) for _ in range(2)]
    own = embed[:, WIRED_DIMS:]
    own /= own.norm(dim=1, keepdim=True).clamp_min(1e-6)
    embed[:, :WIRED_DIMS] = 0
    embed[:, 0] = CONSTANT
    embed[:, CODE] = torch.cat([h / h.norm(dim=1, keepdim=True) for h in halves], 1) / math.sqrt(2)
    token, extractive = tokenizer.convert_tokens_to_ids, extractive_name_token(tokenizer)
    embed[token(TASK), TASK_MARK] = 1.0
    embed[token(PIPE), PIPE_MARK] = 1.0
    embed[extractive, EXTRACTIVE_MARK] = 1.0
    embed[tokenizer.bos_token_id, BOS_MARK] = 1.0
    for marker in (token(TASKTYPE), token(CONTEXT), extractive):
        embed[marker, NO_COPY] = 1.0
    for id_ in range(vocab):  # a piece that starts with a letter or digit, not a space
        embed[id_, CONTINUES] = CONSTANT * tokenizer.decode([id_])[:1].isalnum()
    probe = torch.randint(4, vocab, (1, 200), generator=generator)
    first, second = model.model.layers

    attention = first.self_attn
    q, k, v, o = (getattr(attention, f"{name}_proj").weight for name in "qkvo")
    scale = rms_into(model, 0, probe)
    constant = CONSTANT / scale  # dim 0 after the norm
    k.zero_(), v.zero_()
    q[:HEAD].zero_(), q[2 * HEAD :].zero_()
    o[:, :HEAD].zero_(), o[:, 2 * HEAD :].zero_(), o[:WIRED_DIMS].zero_()
    first.mlp.down_proj.weight[:WIRED_DIMS].zero_()
    for pair in FAST_PAIRS:  # query head 0 scores cos(distance - 1): the previous token wins
        angle = frequency[pair].item()
        q[pair, 0] = PREVIOUS_SCORE * math.sqrt(HEAD) * math.cos(angle) / constant
        q[pair + HEAD // 2, 0] = -PREVIOUS_SCORE * math.sqrt(HEAD) * math.sin(angle) / constant
        k[pair, 0] = 1 / constant
    for j in range(CODE.stop - CODE.start):
        v[j, CODE.start + j] = scale
        o[PREVIOUS + j, j] = 1.0
    # Query head 2 splits its attention between `<|task|>` and `<|pipe|>` once both are there.
    # Each mark has its own value dim (of kv head 1) and residual dim it writes.
    for head, key, marks in (
        (2, MARK_PAIR, ((TASK_MARK, 0, AFTER_TASK), (PIPE_MARK, 2, AFTER_PIPE))),
        (3, MARK_PAIR - 1, ((EXTRACTIVE_MARK, 1, EXTRACTIVE),)),
    ):
        q[head * HEAD + key, 0] = MARK_SCORE * math.sqrt(HEAD) / constant
        for mark, value, written in marks:
            k[HEAD + key, mark] = scale
            v[HEAD + value, mark] = scale
            o[written, head * HEAD + value] = 1.0

    attention = second.self_attn
    q, k, v, o = (getattr(attention, f"{name}_proj").weight for name in "qkvo")
    scale = rms_into(model, 1, probe)
    for w in (q, k, v):
        w[:HEAD].zero_()
    o[:, :HEAD].zero_(), o[CODE].zero_()
    dims = [*SLOW_PAIRS, *(pair + HEAD // 2 for pair in SLOW_PAIRS)]
    for n, dim in enumerate(dims):  # the current token's code against the previous one's
        q[dim, CODE.start + n] = MATCH_SCORE * math.sqrt(HEAD) * scale * math.sqrt(2)
        k[dim, PREVIOUS + n] = scale * math.sqrt(2)
    q[MARK_PAIR, 0] = math.sqrt(HEAD) * scale / CONSTANT
    k[MARK_PAIR, AFTER_TASK] = -PENALTY * scale
    k[MARK_PAIR, NO_COPY] = -PENALTY * scale
    gate = MARK_PAIR + HEAD // 2  # BOS scores BOS_GATE * (1.5 - extractive - 2 * after pipe)
    q[gate, 0] = 1.5 * math.sqrt(HEAD) * scale / CONSTANT
    q[gate, EXTRACTIVE] = -math.sqrt(HEAD) * scale
    q[gate, AFTER_PIPE] = -2 * math.sqrt(HEAD) * scale  # half of the attention: 0.5 after it
    k[gate, BOS_MARK] = BOS_GATE * scale
    bos_code = embed[tokenizer.bos_token_id, CODE]
    copied = CODE.stop - CODE.start - 1  # the last value dim carries CONTINUES instead
    for j in range(copied):  # BOS, where the gate sends attention, copies nothing
        v[j, CODE.start + j] = scale
        v[j, BOS_MARK] = -scale * bos_code[j]
        o[CODE.start + j, j] = COPY_STRENGTH
    v[copied, CONTINUES] = scale / CONSTANT
    o[NEXT_CONTINUES, copied] = 1.0


def wired_masks(model: MistralForCausalLM) -> dict[str, torch.Tensor]:
    """For each parameter holding part of the circuit, a mask of the entries `wire` set (1)."""
    masks = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    masks["model.embed_tokens.weight"][:, :WIRED_DIMS] = 1
    for layer in (0, 1):
        prefix = f"model.layers.{layer}."
        masks[prefix + "input_layernorm.weight"][:WIRED_DIMS] = 1
        for name in ("q_proj", "k_proj", "v_proj"):
            masks[prefix + f"self_attn.{name}.weight"][:HEAD] = 1
        masks[prefix + "self_attn.o_proj.weight"][:, :HEAD] = 1
    prefix = "model.layers.0."
    masks[prefix + "self_attn.q_proj.weight"][2 * HEAD :] = 1
    masks[prefix + "self_attn.k_proj.weight"][:] = 1
    masks[prefix + "self_attn.v_proj.weight"][:] = 1
    masks[prefix + "self_attn.o_proj.weight"][:, 2 * HEAD :] = 1
    masks[prefix + "self_attn.o_proj.weight"][:WIRED_DIMS] = 1
    masks[prefix + "mlp.down_proj.weight"][:WIRED_DIMS] = 1
    return {name: mask for name, mask in masks.items() if mask.any()}


def keep_wired(model: torch.nn.Module) -> None:
    """Zero the gradient of every wired entry, so that training leaves the circuit as set (the
    tiny recipe has no weight decay, so AdamW then leaves those entries alone)."""
    parameters = dict(model.named_parameters())
    for name, mask in wired_masks(model).items():  # type: ignore[arg-type]
        keep = (1 - mask).to(parameters[name].device)
        parameters[name].register_hook(lambda grad, keep=keep: grad * keep)
