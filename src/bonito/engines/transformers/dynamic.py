"""The dynamic decoder: length-sorted, memory-sized, left-padded batches with a growing cache,
each row dropped the step it ends."""

from __future__ import annotations

import psutil
import torch
from transformers import DynamicCache

from bonito.engines.base import Completion
from bonito.engines.sampling import pick_tokens
from bonito.engines.transformers.core import DecoderCore
from bonito.engines.transformers.memory import CPU_TOKEN_BUDGET, kv_bytes_per_token
from bonito.prompt.sampling import SamplingParams, derive_seed


class DynamicDecoding(DecoderCore):
    """The engine's dynamic decoder."""

    def batches(self, encoded: list[list[int]], sampling: SamplingParams) -> list[list[int]]:
        """Prompt indices grouped longest first, each group as large as memory allows."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        budget = self.token_budget()
        groups: list[list[int]] = []
        for index in order:
            if groups and self.fits(groups[-1], encoded, sampling, budget):
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def fits(self, group: list[int], encoded, sampling: SamplingParams, budget: int) -> bool:
        if self.batch_size is not None:
            return len(group) < self.batch_size
        longest = len(encoded[group[0]])  # groups are filled longest first
        return (len(group) + 1) * sampling.n * (longest + sampling.max_tokens) <= budget

    def token_budget(self) -> int:
        """How many sequence tokens one batch may hold: free accelerator memory over the KV cache
        cost per token (with headroom for activations), or a fixed compute budget on CPU."""
        per_token = kv_bytes_per_token(self.lm.config, self.lm.dtype)
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return max(1, int(free * 0.6) // (per_token * 2))
        memory = psutil.virtual_memory().available * 0.5 // (per_token * 2)
        return max(1, int(min(CPU_TOKEN_BUDGET, memory)))

    @torch.inference_mode()
    def generate_batch(
        self, encoded: list[list[int]], seeds: list[int], batch: list[int], sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Decode one left-padded batch (n rows a prompt), dropping each row from the batch and
        its KV cache the step it ends, so finished samples cost nothing while others go on."""
        rows = [encoded[i] for i in batch for _ in range(sampling.n)]
        row_seeds = torch.tensor(
            [derive_seed(seeds[i], k) for i in batch for k in range(sampling.n)],
            device=self.device,
        )
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.lm.config)
        live = list(range(len(rows)))
        tokens: list[list[int]] = [[] for _ in rows]
        for step in range(sampling.max_tokens):
            with self.timed("decode" if step else "prefill"):
                logits = self.lm(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{self.cache_keyword: cache},
                    logits_to_keep=1,
                ).logits
            with self.timed("sampling"):
                chosen = pick_tokens(logits[:, -1].float(), sampling, row_seeds, step)
            keep = []
            for slot, (row, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
                tokens[row].append(token)
                if not self.ended(tokens[row], sampling):
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                chosen, mask, positions = chosen[index], mask[index], positions[index]
                row_seeds = row_seeds[index]
                live = [live[slot] for slot in keep]
            ids = chosen[:, None]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions = positions[:, -1:] + 1
        n = sampling.n
        return [
            [self.completion(tokens[row * n + k], len(encoded[i]), sampling) for k in range(n)]
            for row, i in enumerate(batch)
        ]
