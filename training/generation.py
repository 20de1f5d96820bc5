"""Autoregressive decoding with a key/value cache over `training.model.GPT`'s own layers.

Each block runs with its attention layer's `KeyValueCache` (the model's optional cache
argument), so that each new token costs one position of compute instead of the whole
prefix; this module sets the masks, positions and the output layer around them. Prompts
of different lengths are left-padded; padding is masked out of attention and positions
count from each prompt's first real token (as Hugging Face's GPT-2 does), so a prompt
decodes the same alone or in a batch. Works under tensor parallelism: the layers do their
own all-reduces and the vocabulary shards are gathered before sampling.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state, tensor_parallel

from training.model import GPT, KeyValueCache


@dataclass
class Sampling:
    """How the next token is chosen. GPT-2's samples used top-k 40; `greedy` takes the argmax."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 40  # 0: no top-k cut
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    seed: int = 0


@dataclass
class KVCache:
    """Every attention layer's cache (`training.model.KeyValueCache`); `valid` [batch, positions] is False on padding."""

    layers: list[KeyValueCache] = field(default_factory=list)
    valid: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]


# --------------------------------------------------------------------------- one forward step

def attention_masks(model: GPT, valid: torch.Tensor, new: int) -> list[torch.Tensor]:
    """Per layer [batch, new, positions]: causal (and banded on GPT-3's sparse layers), no padding keys.

    A padding query may see itself, so that no softmax row is empty (no NaN reaches real tokens)."""
    total = valid.shape[1]
    query = torch.arange(total - new, total, device=valid.device)[:, None]
    key = torch.arange(total, device=valid.device)[None, :]
    causal = key <= query
    masks: dict[int, torch.Tensor] = {}
    for block in model.blocks:
        band = block.attention.band
        if band not in masks:
            allowed = causal & (query - key < band) if band else causal
            masks[band] = (allowed[None] & valid[:, None, :]) | (query == key)[None]
    return [masks[block.attention.band] for block in model.blocks]


def forward(model: GPT, tokens: torch.Tensor, valid: torch.Tensor, cache: KVCache | None,
            last_only: bool = False) -> torch.Tensor:
    """Logits over the real vocabulary for `tokens` [batch, new] appended after `cache` (updated in place).

    `valid` [batch, new] marks real tokens. Without a cache this is the plain (padded) forward pass."""
    cache = cache if cache is not None else KVCache()
    all_valid = valid if cache.valid is None else torch.cat([cache.valid, valid], dim=1)
    positions = (all_valid.long().cumsum(1) - 1).clamp(min=0)[:, cache.length:]
    if int(positions.max()) >= model.cfg.seq_length:
        raise ValueError(f"sequence longer than the model's context ({model.cfg.seq_length} positions)")
    x = model.position_embedding.dropout(model.token_embedding(tokens) + model.position_embedding.weight[positions])
    if not cache.layers:
        cache.layers = [KeyValueCache() for _ in model.blocks]
    for block, layer_cache, mask in zip(model.blocks, cache.layers, attention_masks(model, all_valid, tokens.shape[1])):
        layer_cache.mask = mask
        x = block(x, layer_cache)
    cache.valid = all_valid
    if last_only:
        x = x[:, -1:]
    logits = model.token_embedding.logits(model.final_norm(x))
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(
            logits, group=parallel_state.get_tensor_model_parallel_group())
    return logits[..., : model.cfg.vocab_size].float()


# --------------------------------------------------------------------------- choosing tokens

def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """[batch, vocab] logits -> [batch] token ids."""
    if sampling.greedy:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= sampling.top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, valid) [batch, longest], each prompt right-aligned."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        valid[row, width - len(prompt):] = True
    return tokens.to(device), valid.to(device)


@torch.no_grad()
def generate(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling,
             eod_id: int | None = None, stop: Callable[[list[int]], bool] | None = None,
             use_cache: bool = True) -> list[list[int]]:
    """New tokens for each prompt. A row ends at `eod_id` (kept) or once `stop(row's new tokens)` is true.

    Seeded: the same prompts, options and seed give the same tokens. `use_cache=False` recomputes
    the whole prefix at every step (the reference the cache is tested against)."""
    model.eval()
    device = model.token_embedding.weight.device
    tokens, valid = left_pad(prompts, eod_id if eod_id is not None else 0, device)
    generator = torch.Generator().manual_seed(sampling.seed)
    outputs: list[list[int]] = [[] for _ in prompts]
    running = torch.ones(len(prompts), dtype=torch.bool, device=device)
    cache = KVCache() if use_cache else None
    step_tokens, step_valid = tokens, valid
    for _ in range(max_new_tokens):
        if use_cache:
            logits = forward(model, step_tokens, step_valid, cache, last_only=True)
        else:
            logits = forward(model, tokens, valid, None, last_only=True)
        chosen = next_token(logits[:, -1], sampling, generator)
        for row in running.nonzero().flatten().tolist():
            outputs[row].append(int(chosen[row]))
            if (eod_id is not None and outputs[row][-1] == eod_id) or (stop is not None and stop(outputs[row])):
                running[row] = False
        if not running.any():
            break
        step_tokens, step_valid = chosen[:, None], running[:, None].clone()
        tokens, valid = torch.cat([tokens, step_tokens], 1), torch.cat([valid, step_valid], 1)
    return outputs


# --------------------------------------------------------------------------- beam search

@dataclass
class Beams:
    """Beam search as `transformers` does it (GPT-3's completion tasks: width 4, length penalty 0.6).

    A finished hypothesis scores sum(log p) / new_tokens ** length_penalty, new_tokens counting
    the end-of-text token and not the prompt. `early_stopping`: True stops once `width` hypotheses
    are finished; False (transformers' default) once the best running beam, at its current
    length, cannot beat the worst finished one; "never" assumes it may grow to `max_new_tokens`."""

    width: int = 4
    length_penalty: float = 0.6
    early_stopping: bool | str = False


@torch.no_grad()
def beam_search(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, beams: Beams,
                eod_id: int | None = None) -> list[list[int]]:
    """The best finished hypothesis' new tokens for each prompt (ending at `eod_id`, kept, or at `max_new_tokens`).

    Step for step `transformers`' `_beam_search`: 2 x width candidates per prompt, of which only the
    top `width` may finish, the rest keep `width` beams running; the cache follows the surviving beams."""
    model.eval()
    device = model.token_embedding.weight.device
    batch, width, penalty = len(prompts), beams.width, beams.length_penalty
    tokens, valid = left_pad(prompts, eod_id if eod_id is not None else 0, device)
    step_tokens, step_valid = tokens.repeat_interleave(width, 0), valid.repeat_interleave(width, 0)
    cache = KVCache()
    running = torch.zeros(batch, width, 0, dtype=torch.long, device=device)
    running_scores = torch.zeros(batch, width, device=device)
    running_scores[:, 1:] = -1e9  # the first step expands one beam only
    done = torch.zeros(batch, width, max_new_tokens, dtype=torch.long, device=device)
    done_length = torch.zeros(batch, width, dtype=torch.long, device=device)
    done_scores = torch.full((batch, width), -1e9, device=device)
    is_done = torch.zeros(batch, width, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    may_finish = torch.arange(2 * width, device=device) < width
    offsets = torch.arange(batch, device=device)[:, None] * width
    for step in range(max_new_tokens):
        logprobs = forward(model, step_tokens, step_valid, cache, last_only=True)[:, -1].log_softmax(-1)
        vocab = logprobs.shape[-1]
        totals = (logprobs.view(batch, width, vocab) + running_scores[:, :, None]).view(batch, -1)
        top_scores, top = totals.topk(2 * width)
        origin, token = top // vocab, top % vocab
        candidates = torch.cat([running.gather(1, origin[:, :, None].expand(-1, -1, step)), token[:, :, None]], 2)
        ends = (token == eod_id) if eod_id is not None else torch.zeros_like(token, dtype=torch.bool)
        ends |= step + 1 == max_new_tokens
        # the best unfinished candidates run on
        live_scores = top_scores + ends.float() * -1e9
        keep = live_scores.topk(width)[1]
        running = candidates.gather(1, keep[:, :, None].expand(-1, -1, step + 1))
        running_scores = live_scores.gather(1, keep)
        # finished candidates among the top `width` join the finished hypotheses if they rank
        finish_scores = top_scores / ((step + 1) ** penalty)
        finish_scores += (is_done.all(-1, keepdim=True) & (beams.early_stopping is True)).float() * -1e9
        finish_scores += (~improvable).float() * -1e9
        finish_scores += (~(ends & may_finish)) * -1e9
        padded = torch.cat([candidates, candidates.new_zeros(batch, 2 * width, max_new_tokens - step - 1)], 2)
        merged = torch.cat([done_scores, finish_scores], 1).topk(width)[1]
        done = torch.cat([done, padded], 1).gather(1, merged[:, :, None].expand(-1, -1, max_new_tokens))
        done_length = torch.cat([done_length, torch.full_like(token, step + 1)], 1).gather(1, merged)
        done_scores = torch.cat([done_scores, finish_scores], 1).gather(1, merged)
        is_done = torch.cat([is_done, ends & may_finish], 1).gather(1, merged)
        # transformers' stopping heuristic
        best_length = max_new_tokens if beams.early_stopping == "never" and penalty > 0 else step + 1
        worst_done = torch.where(is_done, done_scores.min(1, keepdim=True)[0], -1e9)
        improvable &= (running_scores[:, :1] / (best_length ** penalty) > worst_done).any(-1, keepdim=True)
        if not improvable.any() or (is_done.all() and beams.early_stopping is True) or ends.all():
            break
        rows = (origin.gather(1, keep) + offsets).flatten()
        for layer in cache.layers:
            layer.reorder(rows)
        cache.valid = cache.valid[rows]
        step_tokens, step_valid = running[:, :, -1].reshape(-1, 1), torch.ones(batch * width, 1, dtype=torch.bool,
                                                                                 device=device)
    return [done[row, 0, : done_length[row, 0]].tolist() for row in range(batch)]
