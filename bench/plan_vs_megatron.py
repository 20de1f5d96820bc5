"""Planner estimates side by side with Megatron-LM's published throughput on A100s.

Published rows: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", Table 1 (weak scaling, vocabulary 51,200, sequence 2048, full
activation recomputation, teraFLOP/s per GPU counted with recomputation). The numbers were
transcribed from the paper, not re-measured here. For each row the planner times exactly that
layout (micro-batch 1) with its default A100 cluster description and reports the same
quantity, so the column ratio is the model's error. No GPU is involved: estimates only.

    python bench/plan_vs_megatron.py
"""
from __future__ import annotations

from training.config import load_config
from training.memory import GIB, Layout, estimate_memory
from tools.plan_cost import Cluster, step_cost

# params (B), heads, hidden, layers, TP, PP, GPUs, global batch, published TFLOP/s per GPU
NARAYANAN_2021_TABLE_1 = [
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
]


def main() -> None:
    print(f"{'model':>8} {'TP':>3} {'PP':>3} {'DP':>4} {'GPUs':>5} {'batch':>5} | {'published':>9} "
          f"{'estimated':>9} {'est/pub':>7} | {'bubble':>6} {'MFU':>6} {'peak GiB':>8}")
    for size, heads, hidden, layers, tp, pp, gpus, batch, published in NARAYANAN_2021_TABLE_1:
        config = load_config(None, [
            f"model.n_layers={layers}", f"model.d_model={hidden}", f"model.n_heads={heads}",
            "model.seq_length=2048", "model.vocab_size=51200", "precision=bf16",
            f"train.global_batch_size={batch}", "train.micro_batch_size=1",
            f"parallel.tp={tp}", f"parallel.pp={pp}", "parallel.activation_checkpointing=true",
        ])
        layout = Layout(tp, pp, gpus // (tp * pp), 1, 1, True)
        cost = step_cost(config, layout, Cluster(nodes=gpus // 8, gpus_per_node=8))
        peak = estimate_memory(config, layout).peak / GIB
        print(f"{size:>7}B {tp:>3} {pp:>3} {layout.dp:>4} {gpus:>5} {batch:>5} | {published:>9} "
              f"{cost.tflops_per_gpu:>9.0f} {cost.tflops_per_gpu / published:>7.2f} | "
              f"{cost.bubble_fraction:>6.1%} {cost.mfu:>6.1%} {peak:>8.1f}")


if __name__ == "__main__":
    main()
