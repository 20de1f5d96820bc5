"""Step-time model for a layout: compute, tensor/pipeline/data-parallel communication, bubble.

FLOP counts follow Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", section 5.1): a transformer layer's forward pass costs
24bsh^2 + 4bs^2h FLOPs (24bsh^2 + 4bswh on GPT-3's banded layers of window w, as
training.metrics.attended_keys counts them) and the logits 2bshV; backward costs twice the
forward, and full activation recomputation adds one more forward of every layer. Communication
uses ring collectives (an all-reduce moves 2(n-1)/n of the data per GPU) over the bandwidth of the
links the group spans: NVLink when the group stays inside a node, the network otherwise.
Nothing is assumed to overlap with compute, so the estimate errs on the slow side.
"""
from __future__ import annotations

from dataclasses import dataclass

from training.config import Config
from training.memory import BYTES, Layout, stage_layers
from training.metrics import attended_keys


@dataclass(frozen=True)
class Cluster:
    nodes: int = 128
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0
    peak_tflops: float = 312.0  # dense bf16/fp16 tensor-core peak per GPU (A100)
    intra_node_gbps: float = 200.0  # achievable all-reduce bus bandwidth per GPU, GB/s (NVLink)
    inter_node_gbps: float = 25.0  # network bandwidth per GPU, GB/s (8 x 200 Gb/s HDR per node)
    hbm_gbps: float = 2000.0  # GPU memory bandwidth, GB/s, for the optimizer step
    # Fraction of peak that the model's GEMMs reach; calibrated in docs/planner.md against
    # Megatron-LM's published per-GPU throughput.
    compute_efficiency: float = 0.55

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class StepCost:
    step_s: float
    compute_s: float  # busy compute of the slowest stage, all micro-batches
    bubble_s: float  # pipeline fill and drain
    tp_comm_s: float
    pp_comm_s: float
    dp_comm_s: float
    optimizer_s: float
    tp_bytes: int  # per GPU per step
    pp_bytes: int
    dp_bytes: int
    model_tflops: float  # per step, without recomputation
    mfu: float  # model FLOPs utilisation
    tflops_per_gpu: float  # hardware FLOP/s per GPU, counting recomputation (as Megatron reports)

    @property
    def bubble_fraction(self) -> float:
        return self.bubble_s / self.step_s


def model_flops(config: Config, tokens: int, recompute: bool = False) -> float:
    """FLOPs of one training step over `tokens` tokens (Narayanan et al. eq. 3 and its no-recompute form)."""
    m = config.model
    s, h, layers, vocab = m.seq_length, m.d_model, m.n_layers, config.model.padded_vocab_size(1)
    sequences = tokens / s
    passes = 4 if recompute else 3
    return sequences * (passes * (layers * 24 * s * h * h + 4 * s * h * attended_keys(m)) + 3 * 2 * s * h * vocab)


def _group_bandwidth(cluster: Cluster, stride: int, size: int) -> float:
    """Bytes/s of a communication group whose ranks are `stride` apart in the global order."""
    inside_node = stride * size <= cluster.gpus_per_node
    return (cluster.intra_node_gbps if inside_node else cluster.inter_node_gbps) * 1e9


def _ring(n: int, nbytes: float) -> float:
    return 2 * (n - 1) / n * nbytes if n > 1 else 0.0


def step_cost(config: Config, layout: Layout, cluster: Cluster) -> StepCost:
    """Estimated time of one optimizer step; ranks ordered tp fastest, then dp, then pp."""
    m = config.model
    s, b, h, e = m.seq_length, layout.micro_batch_size, m.d_model, BYTES[config.precision]
    t, pp, dp, z = layout.tp, layout.pp, layout.dp, layout.zero_stage
    recompute = layout.activation_checkpointing
    micro_batches = layout.grad_accumulation(config.train.global_batch_size)
    flops_per_second = cluster.peak_tflops * 1e12 * cluster.compute_efficiency
    tp_bw = _group_bandwidth(cluster, 1, t)
    dp_bw = _group_bandwidth(cluster, t, dp)
    pp_bw = _group_bandwidth(cluster, t * dp, 2)
    activation = s * b * h * e

    stages = stage_layers(config, t, pp)
    keys = attended_keys(m) / m.n_layers  # a stage's blocks cost the model's mean (dense and banded mixed)
    slowest, tp_bytes = 0.0, 0.0
    for params, blocks, _, has_head in stages:
        block_flops = (24 * b * s * h * h + 4 * b * s * keys * h) / t * (4 if recompute else 3)
        head_flops = 3 * 2 * b * s * h * m.padded_vocab_size(t) / t if has_head else 0
        # Megatron layers all-reduce twice in forward and twice in backward (plus 2 to recompute).
        stage_tp_bytes = blocks * (6 if recompute else 4) * _ring(t, activation)
        per_micro_batch = (blocks * block_flops + head_flops) / flops_per_second + stage_tp_bytes / tp_bw
        if per_micro_batch > slowest:
            slowest, tp_bytes = per_micro_batch, stage_tp_bytes
    tp_comm = micro_batches * tp_bytes / tp_bw
    pp_bytes = 2 * activation * micro_batches if pp > 1 else 0  # activations forward, gradients back
    pp_comm = pp_bytes / pp_bw
    compute = micro_batches * slowest - tp_comm
    bubble = (pp - 1) * slowest

    largest = max(params for params, *_ in stages)
    dp_bytes = _ring(dp, largest * e)  # reduce-scatter + all-gather == one all-reduce
    if z >= 3:  # parameters are all-gathered again for forward and backward of every micro-batch
        dp_bytes += micro_batches * 2 * (dp - 1) / dp * largest * e
    dp_comm = dp_bytes / dp_bw
    # Adam touches master weights, moments and gradients (fp32) and writes the 16-bit copy.
    optimizer = largest / (dp if z >= 1 else 1) * (4 * 7 + e) / (cluster.hbm_gbps * 1e9)

    step = micro_batches * slowest + bubble + pp_comm + dp_comm + optimizer
    tokens = config.train.global_batch_size * s
    useful = model_flops(config, tokens)
    executed = model_flops(config, tokens, recompute)
    return StepCost(
        step_s=step, compute_s=compute, bubble_s=bubble, tp_comm_s=tp_comm, pp_comm_s=pp_comm,
        dp_comm_s=dp_comm, optimizer_s=optimizer, tp_bytes=int(tp_bytes * micro_batches),
        pp_bytes=int(pp_bytes), dp_bytes=int(dp_bytes),
        model_tflops=useful / 1e12,
        mfu=useful / (step * layout.world_size * cluster.peak_tflops * 1e12),
        tflops_per_gpu=executed / (step * layout.world_size) / 1e12,
    )
