"""Per-GPU memory model for a GPT under tensor, pipeline and ZeRO data parallelism.

Shared by the planner (`gpt-plan`) and the trainer, which calls `check_fits` to refuse a
layout that cannot fit before it allocates anything. The model follows what the trainer's
engine (DeepSpeed ZeRO on megatron-core tensor-parallel layers) actually keeps:

* parameters and gradients in the training precision, sharded by TP and PP (and by DP for
  ZeRO-3 parameters, ZeRO-2/3 gradients);
* DeepSpeed's ZeRO optimizer: an fp32 master copy plus Adam's two moments (12 bytes per
  parameter, sharded over DP for ZeRO >= 1), and at step time a transient fp32 gradient
  partition (4 bytes per parameter / DP) that exists while activations are already freed;
* activations per Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models" (eq. 2 with tensor parallelism, no sequence parallelism): per layer
  sbh(10 + 24/t) bytes in 16-bit with dropout, or 2sbh with full recomputation, held for
  min(pp - stage, micro-batches) micro-batches in flight under 1F1B. Their attention term
  5as^2b/t (scores, dropout output and mask) is not kept here: the model's attention is
  PyTorch's SDPA, whose fused GPU kernels (flash, memory-efficient) keep one fp32 log-sum-exp
  per query and head and regenerate dropout; a banded layer (GPT-3's sparse ones) also keeps
  its padded queries, keys and values, counted as (window + chunk) / chunk copies of K and V
  (`model.banded_attention`'s overlapping blocks; an upper bound: PyTorch on CPU keeps them as
  views of one padded copy);
* DeepSpeed's pipeline buffers (stage inputs received and outputs kept for backward);
* ZeRO's gradient reduction bucket (DeepSpeed's default size) and ZeRO-3's working set: two
  gathered blocks and one block of unreduced gradients.

All sizes are bytes for the worst pipeline stage.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from training.config import BAND_CHUNK, Config, ConfigError, check_layout

GIB = 1024**3
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# What a GPU loses before the model allocates: CUDA context, NCCL buffers, allocator
# fragmentation and communication buckets. Deliberately round; override per cluster.
DEFAULT_RESERVE_GB = 4.0
# DeepSpeed's default zero_optimization.reduce_bucket_size. During backward, ZeRO-1 and ZeRO-3
# allocate a contiguous gradient-reduction bucket of this many elements in the training dtype,
# whatever the model size (ZeRO-1: stage_1_and_2.setup_buckets, released after the reduction;
# seen once by tools/plan_measure as 1.0 GB in bf16, 2.0 GB in fp32). ZeRO-2 was measured
# without it (gradients are reduced bucket by bucket instead).
REDUCE_BUCKET_ELEMENTS = 500_000_000


@dataclass(frozen=True)
class Layout:
    """One way to lay a model out on `tp * pp * dp` GPUs."""

    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    zero_stage: int
    activation_checkpointing: bool

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def grad_accumulation(self, global_batch_size: int) -> int:
        return global_batch_size // (self.micro_batch_size * self.dp)

    def overrides(self) -> list[str]:
        """The trainer's `--set` overrides that select this layout (DP follows from the world size)."""
        return [
            f"parallel.tp={self.tp}",
            f"parallel.pp={self.pp}",
            f"parallel.zero_stage={self.zero_stage}",
            f"parallel.activation_checkpointing={str(self.activation_checkpointing).lower()}",
            f"train.micro_batch_size={self.micro_batch_size}",
        ]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the GPU of one pipeline stage (the stage with the largest peak)."""

    stage: int
    parameters: int
    gradients: int
    optimizer: int  # fp32 master weights + Adam moments
    optimizer_step: int  # transient fp32 gradient partition, alive only during optimizer.step()
    activations: int  # everything saved for backward, all micro-batches in flight
    pipeline_buffers: int
    reduce_bucket: int  # DeepSpeed's gradient-reduction bucket, alive during backward

    @property
    def model_states(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    @property
    def peak(self) -> int:
        """Model states plus the larger of the backward-pass and optimizer-step working sets."""
        backward = self.activations + self.pipeline_buffers + self.reduce_bucket
        return self.model_states + max(backward, self.optimizer_step)

    def breakdown_gib(self) -> dict[str, float]:
        parts = {f.name: getattr(self, f.name) / GIB for f in fields(self) if f.name != "stage"}
        parts["peak"] = self.peak / GIB
        return parts


def layout_of(config: Config, world_size: int) -> Layout:
    """The layout a validated config selects on `world_size` processes."""
    dp = check_layout(config, world_size)
    p = config.parallel
    return Layout(p.tp, p.pp, dp, config.train.micro_batch_size, p.zero_stage, p.activation_checkpointing)


def _vocab(config: Config, tp: int) -> int:
    if not config.model.vocab_size:
        raise ConfigError("model.vocab_size is 0 (taken from the tokenizer): set it before estimating memory")
    return config.model.padded_vocab_size(tp)


def block_parameters(config: Config, tp: int) -> int:
    """Parameters of one transformer block held by one tensor-parallel rank.

    Column-parallel QKV/fc1 (weights and biases) and row-parallel proj/fc2 weights are split
    by TP; row-parallel biases and both LayerNorms are replicated.
    """
    m = config.model
    h, inner, ffn = m.d_model, m.n_heads * m.head_dim, m.ffn_multiplier * m.d_model
    split = h * 3 * inner + 3 * inner + inner * h + h * ffn + ffn + ffn * h
    return split // tp + 2 * h + 4 * h


def _layer_weights(config: Config, tp: int) -> tuple[int, ...]:
    """Parameter counts of the trainer's pipeline layers, in `ModelConfig.layers()` order.

    The output layer is the token embedding again (tied): DeepSpeed's TiedLayerSpec keeps a
    copy on the last stage, and counts it when it balances stages by parameters.
    """
    h = config.model.d_model
    sizes = {"token_embedding": _vocab(config, tp) * h // tp, "position_embedding": config.model.seq_length * h,
             "final_norm": 2 * h}
    block = block_parameters(config, tp)
    return tuple(block if name.startswith("blocks.") else sizes[name] for name in config.model.layers())


@functools.lru_cache(maxsize=None)
def _cut(weights: tuple[int, ...], pp: int, method: str) -> tuple[int, ...]:
    # The trainer's engine cuts the layer list with these functions (PipelineModule).
    from deepspeed.runtime.utils import partition_balanced, partition_uniform

    if method == "parameters":
        return tuple(partition_balanced(list(weights), pp))
    return tuple(partition_uniform(len(weights), pp))


def stage_layers(config: Config, tp: int, pp: int, method: str = "") -> list[tuple[int, int, bool, bool]]:
    """Per stage: (parameters per TP rank, transformer blocks, has embedding, has head).

    `method`: DeepSpeed's partition method; default the config's `parallel.partition_method`."""
    weights = _layer_weights(config, tp)
    if pp == 1:  # embedding and output layer on one stage share the tied word embedding
        return [(sum(weights) - weights[-1], config.model.n_layers, True, True)]
    names = config.model.layers()
    bounds = _cut(weights, pp, method or config.parallel.partition_method)
    stages = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        blocks = sum(name.startswith("blocks.") for name in names[start:stop])
        stages.append((sum(weights[start:stop]), blocks, start == 0, stop == len(weights)))
    return stages


def _stages_without_blocks(config: Config, method: str = "") -> list[int]:
    p = config.parallel
    return [stage for stage, (_, blocks, _, _) in enumerate(stage_layers(config, p.tp, p.pp, method)) if not blocks]


def check_stages(config: Config) -> None:
    """Refuse a pipeline cut that leaves a stage without a transformer block (needs the vocabulary).

    Such a stage holds only embeddings, so it has no bias or LayerNorm parameters: DeepSpeed's
    ZeRO optimizer keeps one parameter group there instead of two and computes its gradient
    norm with one collective fewer than the other stages. The ranks then wait in different
    collectives until the timeout (4 layers on 3 stages hung after step 1)."""
    p = config.parallel
    if p.pp == 1:
        return
    empty = _stages_without_blocks(config)
    if empty:
        other = "uniform" if p.partition_method == "parameters" else "parameters"
        remedy = "fewer stages" + ("" if _stages_without_blocks(config, other) else
                                   f" or parallel.partition_method={other}")
        raise ConfigError(
            f"parallel.pp={p.pp} with parallel.partition_method={p.partition_method} leaves pipeline "
            f"stage {', '.join(map(str, empty))} without a transformer block, which DeepSpeed cannot train "
            f"(the stages would wait in different collectives); use {remedy}"
        )


def block_activations(config: Config, layout: Layout) -> int:
    """Bytes one transformer block saves for backward for one micro-batch (Korthikanti eq. 2 without
    its attention-scores term, which fused attention kernels do not keep; see the module docstring).

    Generalised to any element size `e` (the paper's 16-bit case is e=2) and to dropout off,
    where the dropout masks are not kept. A model with banded layers is counted at a banded
    layer's size for every block (the larger of the two; stages mix both kinds).
    """
    m, t = config.model, layout.tp
    s, b, h, a = m.seq_length, layout.micro_batch_size, m.d_model, m.n_heads
    e = BYTES[config.precision]
    keep = 1 if m.dropout > 0 else 0
    sbh = s * b * h
    replicated = sbh * (4 * e + 2 * keep)  # 2 LayerNorm inputs, QKV and fc1 inputs; 2 masks
    split = sbh * 12 * e // t  # Q, K, V, proj input, GELU input and output (4h wide)
    attention = 4 * a * s * b // t  # the kernels' fp32 log-sum-exp per query and head
    if m.sparse_every and m.sparse_window < s:
        chunk = min(m.sparse_window, BAND_CHUNK)
        copies = 1 + 2 * (m.sparse_window + chunk) // chunk  # padded Q, overlapping K and V blocks
        attention += copies * sbh * e // t
    return replicated + split + attention


def _stage_activations(config: Config, layout: Layout, blocks: int, has_embedding: bool,
                       has_head: bool, in_flight: int) -> int:
    m = config.model
    s, b, h = m.seq_length, layout.micro_batch_size, m.d_model
    e = BYTES[config.precision]
    full = block_activations(config, layout)
    if layout.activation_checkpointing:
        # Only each block's input is kept; one block is rebuilt at a time during backward.
        per_micro_batch = blocks * s * b * h * e
        recompute = full if blocks else 0
    else:
        per_micro_batch = blocks * full
        recompute = 0
    if has_embedding and m.dropout > 0:
        per_micro_batch += s * b * h  # embedding dropout mask
    activations = in_flight * per_micro_batch + recompute
    if has_head:
        # Final LayerNorm input, logits and the fp32 softmax of the vocab-parallel cross-entropy,
        # for the one micro-batch whose backward starts right after its forward on the last stage.
        activations += s * b * h * e + s * b * _vocab(config, layout.tp) // layout.tp * (e + 4)
    return activations


def _gradients(params: int, e: int, z: int, dp: int, gathered: int) -> int:
    if z <= 1:
        return params * e
    if z == 2:  # gradients live until a bucket's worth is reduce-scattered into the owned partition
        partition = params * e // dp if params > REDUCE_BUCKET_ELEMENTS else 0
        return partition + min(params, REDUCE_BUCKET_ELEMENTS) * e
    return params * e // dp + gathered


def estimate_stages(config: Config, layout: Layout) -> list[MemoryEstimate]:
    """Memory of each pipeline stage of `config` laid out as `layout`."""
    e = BYTES[config.precision]
    z, dp, pp = layout.zero_stage, layout.dp, layout.pp
    micro_batches = layout.grad_accumulation(config.train.global_batch_size)
    s, b, h = config.model.seq_length, layout.micro_batch_size, config.model.d_model
    # ZeRO keeps an fp32 master partition even in fp32; without ZeRO only 16-bit training has one.
    master = 4 if z >= 1 or e < 4 else 0
    # ZeRO-3 gathers whole blocks for compute (the current one and one prefetched), and ZeRO-2/3
    # hold a block's full gradients until they are reduce-scattered.
    gathered = block_parameters(config, layout.tp) * e if z >= 2 and dp > 1 else 0
    # ZeRO-1 and -3 allocate the contiguous bucket once gradients accumulate or a pipeline runs.
    bucket = REDUCE_BUCKET_ELEMENTS * e if z in (1, 3) and (micro_batches > 1 or pp > 1) else 0
    estimates = []
    for stage, (params, blocks, has_embedding, has_head) in enumerate(stage_layers(config, layout.tp, pp)):
        in_flight = min(pp - stage, micro_batches)
        if pp > 1:  # DeepSpeed keeps max(2, in_flight) input/output buffers plus a gradient buffer
            buffers = (2 * max(2, in_flight) + 1) * s * b * h * e
        else:
            buffers = 0
        estimates.append(MemoryEstimate(
            stage=stage,
            parameters=params * e // dp + 2 * gathered if z >= 3 else params * e,
            gradients=_gradients(params, e, z, dp, gathered),
            optimizer=params * (master + 8) // (dp if z >= 1 else 1),
            optimizer_step=params * 4 // dp if z >= 1 else 0,
            activations=_stage_activations(config, layout, blocks, has_embedding, has_head, in_flight),
            pipeline_buffers=buffers,
            reduce_bucket=bucket,
        ))
    return estimates


def estimate_memory(config: Config, layout: Layout) -> MemoryEstimate:
    """Memory of the pipeline stage with the highest peak."""
    return max(estimate_stages(config, layout), key=lambda estimate: estimate.peak)


def check_fits(config: Config, world_size: int, gpu_memory_gb: float,
               reserve_gb: float = DEFAULT_RESERVE_GB) -> MemoryEstimate:
    """Raise ConfigError (naming the largest parts) when the layout cannot fit in GPU memory."""
    estimate = estimate_memory(config, layout_of(config, world_size))
    budget = (gpu_memory_gb - reserve_gb) * GIB
    if estimate.peak > budget:
        parts = estimate.breakdown_gib()
        detail = ", ".join(f"{name} {parts[name]:.1f}" for name in
                           ("parameters", "gradients", "optimizer", "activations", "pipeline_buffers",
                            "reduce_bucket"))
        p = config.parallel
        raise ConfigError(
            f"layout tp={p.tp} pp={p.pp} dp={world_size // (p.tp * p.pp)} zero_stage={p.zero_stage} "
            f"micro_batch_size={config.train.micro_batch_size} needs {parts['peak']:.1f} GiB per GPU "
            f"(stage {estimate.stage}: {detail} GiB) but {gpu_memory_gb:g} GiB - {reserve_gb:g} GiB reserve "
            f"is available; run `gpt-plan` to find a layout that fits"
        )
    return estimate
