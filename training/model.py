"""GPT-1, GPT-2 and GPT-3, built from megatron-core's tensor-parallel layers.

Reads top to bottom: embeddings, attention, MLP, block, the whole model, the loss.
Activations are [batch, sequence, hidden]. Under tensor parallelism (TP) each rank
holds n_heads/TP attention heads, 1/TP of the MLP columns and 1/TP of the (padded)
vocabulary; megatron-core's layers do the all-reduces. The model knows nothing of
pipeline stages, ZeRO, launchers or checkpoints: `training/parallel.py` cuts its layers,
listed in forward order by `ModelConfig.layers()` (token embedding, positions, blocks, final
norm, the tied embedding as output layer), into pipeline stages. Attention takes an
optional `KeyValueCache` for decoding.

Requires `megatron.core.parallel_state` to be initialised (a 1-process group for TP=1).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.model_parallel_config import ModelParallelConfig
from torch import nn

from training.config import BAND_CHUNK, ModelConfig
from training.rng import tensor_parallel_rng

try:  # NVIDIA apex's fused LayerNorm, when built on a GPU cluster (never PyPI's `apex`).
    from apex.normalization import FusedLayerNorm as _FusedLayerNorm
except ImportError:
    _FusedLayerNorm = None


def layer_norm(width: int) -> nn.Module:
    if _FusedLayerNorm is not None and torch.cuda.is_available():
        return _FusedLayerNorm(width)
    return nn.LayerNorm(width)


_INITIALISE = contextvars.ContextVar("initialise_weights", default=True)


@contextlib.contextmanager
def without_initialisation():
    """Build models whose weights keep the memory they were allocated with, for a caller that then
    overwrites every one (a checkpoint loader): drawing a model of billions of weights on a CPU
    takes seconds to minutes for nothing. The layers are otherwise built as always (megatron-core's
    tensor-parallel attributes included)."""
    token = _INITIALISE.set(False)
    try:
        yield
    finally:
        _INITIALISE.reset(token)


def seeded_normal(seed: int, name: str, std: float):
    """An init function drawing from N(0, std) with a stream named after the parameter.

    megatron-core calls it on the full (unsplit) weight and keeps this rank's shard, so
    every layout (1 process, TP, PP) starts from bit-identical weights.
    """
    def init(weight: torch.Tensor) -> None:
        if not _INITIALISE.get():
            return
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
        with torch.no_grad():
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
    return init


def megatron_config(tp: int, pp: int) -> ModelParallelConfig:
    return ModelParallelConfig(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        use_cpu_initialization=True,  # build each full weight once, then shard it (layout-independent)
        perform_initialization=True,  # also marks TP weights as sharded for grad-norm clipping
        params_dtype=torch.float32,  # DeepSpeed casts to bf16/fp16 itself
        gradient_accumulation_fusion=False,
    )


# --------------------------------------------------------------------------- embeddings

class TokenEmbedding(nn.Module):
    """Vocabulary-parallel token embedding; `logits` reuses it as the tied output layer."""

    def __init__(self, cfg: ModelConfig, seed: int):
        super().__init__()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.embedding = tensor_parallel.VocabParallelEmbedding(
            cfg.padded_vocab_size(tp), cfg.d_model,
            init_method=seeded_normal(seed, "token_embedding", cfg.init_std),
            config=megatron_config(tp, 1), tp_group=parallel_state.get_tensor_model_parallel_group(),
        )
        # This rank's logit columns from here on are vocabulary padding (ids >= vocab_size).
        self.first_padded = min(max(cfg.vocab_size - self.embedding.vocab_start_index, 0),
                                self.embedding.num_embeddings_per_partition)

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the vocabulary logits: [batch, seq, padded_vocab / TP].

        Padding columns hold the dtype's most negative value: no probability in any softmax and
        no gradient to the padded rows, so every padding (every TP size) is the same model.
        Finite, not -inf, so that a masked target's loss times a zero weight stays 0, not NaN."""
        hidden = tensor_parallel.copy_to_tensor_model_parallel_region(
            hidden, group=parallel_state.get_tensor_model_parallel_group())
        logits = F.linear(hidden, self.embedding.weight)
        if self.first_padded < logits.shape[-1]:  # only ranks holding padding pay for the fill
            logits[..., self.first_padded:] = torch.finfo(logits.dtype).min
        return logits


class PositionEmbedding(nn.Module):
    """Adds learned absolute positions (GPT-1/2/3), then embedding dropout."""

    def __init__(self, cfg: ModelConfig, seed: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.seq_length, cfg.d_model))
        seeded_normal(seed, "position_embedding", cfg.init_std)(self.weight)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dropout(hidden + self.weight[: hidden.shape[1]])


# --------------------------------------------------------------------------- attention

def residual_init_std(cfg: ModelConfig) -> float:
    return cfg.init_std if cfg.arch == "gpt1" else cfg.init_std / math.sqrt(2 * cfg.n_layers)


def column_then_row(cfg: ModelConfig, seed: int, column_name: str, row_name: str, column_width: int,
                    row_width: int) -> tuple[nn.Module, nn.Module]:
    """Megatron's pair: d_model -> column_width split by output columns across TP ranks, then
    row_width split by input rows -> d_model, summed over TP ranks (one all-reduce per pair).

    The second layer writes into the residual stream: GPT-2/3 scale its init by 1/sqrt(2 L); GPT-1
    draws every weight from N(0, init_std) (its paper's N(0, 0.02): LayerNorm after each sublayer).
    """
    tp_group = parallel_state.get_tensor_model_parallel_group()
    config = megatron_config(parallel_state.get_tensor_model_parallel_world_size(), 1)
    column = tensor_parallel.ColumnParallelLinear(
        cfg.d_model, column_width, config=config, bias=True, gather_output=False, tp_group=tp_group,
        init_method=seeded_normal(seed, column_name, cfg.init_std),
    )
    row = tensor_parallel.RowParallelLinear(
        row_width, cfg.d_model, config=config, bias=True, input_is_parallel=True, skip_bias_add=False,
        tp_group=tp_group, init_method=seeded_normal(seed, row_name, residual_init_std(cfg)),
    )
    return column, row


def banded_causal_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """True where query i may attend key j: j <= i and i - j < window (GPT-3's local bands).

    The dense [seq, seq] definition: `banded_attention` computes the same thing by blocks."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (i - j < window)


@functools.lru_cache(maxsize=16)
def _block_band_mask(blocks: int, chunk: int, window: int, device: torch.device) -> torch.Tensor:
    """[1, blocks, chunk, window + chunk]: query a of block m may see key b of its key block
    (position m * chunk - window + b) when it is in the band and not before the sequence.

    Cached: it depends on the shapes only, and a training run uses one or two."""
    a = torch.arange(chunk, device=device)[:, None]
    b = torch.arange(window + chunk, device=device)[None, :]
    m = torch.arange(blocks, device=device)[:, None, None]
    return ((a < b) & (b <= a + window) & (b >= window - m * chunk))[None]


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     dropout_p: float = 0.0, chunk: int = BAND_CHUNK) -> torch.Tensor:
    """SDPA under `banded_causal_mask(seq, window)` on [batch, heads, seq, head_dim], in
    O(seq x window) time and memory instead of O(seq^2).

    Queries go in blocks of `chunk` positions; each block attends only the window + chunk keys
    ending at its last query, all blocks in one SDPA call over [batch x heads, blocks] (a
    dense kernel inside each block; the sequence is zero-padded to whole blocks). A window
    covering the sequence is plain causal attention (the flash kernel, no mask).
    """
    batch, heads, seq, _ = q.shape
    if window >= seq:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    chunk = min(window, chunk)
    blocks = -(-seq // chunk)
    pad = blocks * chunk - seq
    q = F.pad(q, (0, 0, 0, pad)).reshape(batch * heads, blocks, chunk, -1)

    def key_blocks(x: torch.Tensor) -> torch.Tensor:  # overlapping: block m starts at m * chunk - window
        x = F.pad(x, (0, 0, window, pad)).unfold(2, window + chunk, chunk)
        return x.transpose(-1, -2).reshape(batch * heads, blocks, window + chunk, -1)

    mask = _block_band_mask(blocks, chunk, window, q.device)
    y = F.scaled_dot_product_attention(q, key_blocks(k), key_blocks(v), attn_mask=mask, dropout_p=dropout_p)
    return y.reshape(batch, heads, blocks * chunk, -1)[:, :, :seq]


@dataclass
class KeyValueCache:
    """One attention layer's keys and values from earlier calls, for decoding a few tokens at a time.

    `mask` [batch, new, past + new] says which keys each new query may see (causal, banded,
    no padding); whoever decodes sets it before each call (training/generation.py)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not None:
            k, v = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` (in that order, repeats allowed): beam search's surviving beams."""
        self.keys, self.values = self.keys[rows], self.values[rows]


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention; heads are split across TP ranks.

    The fused QKV weight is laid out per head, [head][q|k|v][head_dim], so that a
    contiguous TP shard holds whole heads.
    """

    def __init__(self, cfg: ModelConfig, layer: int, seed: int):
        super().__init__()
        self.heads_per_rank = cfg.n_heads // parallel_state.get_tensor_model_parallel_world_size()
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.band = cfg.sparse_window if cfg.is_sparse_layer(layer) else 0
        inner = cfg.n_heads * cfg.head_dim
        self.qkv, self.proj = column_then_row(cfg, seed, f"layers.{layer}.attention.qkv",
                                              f"layers.{layer}.attention.proj", 3 * inner, inner)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KeyValueCache | None = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        qkv, _ = self.qkv(x)
        qkv = qkv.view(batch, seq, self.heads_per_rank, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        dropout_p = self.dropout if self.training else 0.0
        with tensor_parallel_rng().fork():  # each TP rank drops different heads' weights
            if cache is None:  # a dense layer is a band as long as the sequence
                y = banded_attention(q, k, v, self.band or seq, dropout_p)
            else:  # decoding: the new queries see the cached keys too, as the caller's mask allows
                k, v = cache.extend(k, v)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask[:, None], dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(batch, seq, self.heads_per_rank * self.head_dim)
        out, _ = self.proj(y)
        return self.resid_dropout(out)


# --------------------------------------------------------------------------- MLP and block

class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, seed: int):
        super().__init__()
        width = cfg.ffn_multiplier * cfg.d_model
        self.fc, self.proj = column_then_row(cfg, seed, f"layers.{layer}.mlp.fc", f"layers.{layer}.mlp.proj",
                                             width, width)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.fc(x)
        out, _ = self.proj(F.gelu(h, approximate="tanh"))  # GPT-2's tanh GELU
        return self.dropout(out)


class Block(nn.Module):
    """GPT-2/3: x + attn(ln(x)), then x + mlp(ln(x)). GPT-1 (post-LN): ln(x + attn(x)), ln(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig, layer: int, seed: int):
        super().__init__()
        self.pre_norm = cfg.arch != "gpt1"
        self.ln_1 = layer_norm(cfg.d_model)
        self.attention = CausalSelfAttention(cfg, layer, seed)
        self.ln_2 = layer_norm(cfg.d_model)
        self.mlp = MLP(cfg, layer, seed)

    def forward(self, x: torch.Tensor, cache: KeyValueCache | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.ln_1(x), cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attention(x, cache))
        return self.ln_2(x + self.mlp(x))


class FinalNorm(nn.Module):
    """GPT-2/3's LayerNorm after the last block (GPT-1 has none)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln = layer_norm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)


# --------------------------------------------------------------------------- the model

class GPT(nn.Module):
    """The whole model on one pipeline stage: tokens -> vocab-parallel logits."""

    def __init__(self, cfg: ModelConfig, seed: int):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = TokenEmbedding(cfg, seed)
        self.position_embedding = PositionEmbedding(cfg, seed)
        self.blocks = nn.ModuleList(Block(cfg, layer, seed) for layer in range(cfg.n_layers))
        self.final_norm = FinalNorm(cfg) if cfg.arch != "gpt1" else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.position_embedding(self.token_embedding(tokens))
        for block in self.blocks:
            x = block(x)
        return self.token_embedding.logits(self.final_norm(x))


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over vocab-parallel logits (computed in fp32).

    The softmax covers the real vocabulary only: `TokenEmbedding.logits` masks the padding columns."""
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels)
    return losses.mean()
