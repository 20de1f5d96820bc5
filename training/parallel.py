"""Parallelism is applied here and only here.

The GPT layers from `training/model.py` (already tensor-parallel) are cut into
pipeline stages with DeepSpeed's `PipelineModule` (token embedding tied between the
first and last stage) when PP > 1, and wrapped in a DeepSpeed engine that does ZeRO
data parallelism, mixed precision, loss scaling and gradient clipping. With PP = 1 the
plain engine runs the whole model, which also allows ZeRO stages 2 and 3.

What the last stage computes is the engine's `loss`: the language-modelling loss for
pretraining, or a `HeadLoss` (a task head with a loss, e.g. gpt-finetune's) that also reads
the final hidden states and trains with the model, held by the last stage only.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import parallel_state
from torch.utils.checkpoint import checkpoint

from training.config import Config, ModelConfig
from training.distributed import Layout
from training.model import GPT, Block, FinalNorm, PositionEmbedding, TokenEmbedding, language_model_loss
from training.rng import tensor_parallel_rng

# (tokens [micro_batch, seq], labels): next tokens [micro_batch, seq], or a tuple of tensors a `HeadLoss` reads
MicroBatch = tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...]]
Loss = Callable[..., torch.Tensor]  # (last stage's outputs, labels) -> the micro-batch's scalar loss


class HeadLoss(torch.nn.Module):
    """A loss with parameters (a task head): called with ((logits, final hidden states), labels).

    The engine makes it the model's `loss_fn` submodule on the last pipeline stage (and of the
    whole model at PP = 1), so its parameters are optimised, data-parallel averaged and
    checkpointed (as `loss_fn.*`) with the model's."""

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], labels) -> torch.Tensor:
        raise NotImplementedError


def recompute(function, *args):
    """Activation checkpointing that replays dropout masks, the TP-local ones included."""
    return checkpoint(function, *args, use_reentrant=False, context_fn=tensor_parallel_rng().checkpoint_context)


def _output_logits(embedding: TokenEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    return embedding.logits(hidden)


def _output_logits_and_states(embedding: TokenEmbedding, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return embedding.logits(hidden), hidden


def layer_spec(name: str, m: ModelConfig, seed: int, output: Callable | None = None) -> LayerSpec:
    """DeepSpeed's spec for one of `ModelConfig.layers()`; the token embedding is tied between its two uses,
    the second (`output` given) computing the last stage's outputs from the final hidden states."""
    if name == "token_embedding":
        return TiedLayerSpec("token_embedding", TokenEmbedding, m, seed, tied_weight_attr=["weight"],
                             **({"forward_fn": output} if output else {}))
    if name == "position_embedding":
        return LayerSpec(PositionEmbedding, m, seed)
    if name == "final_norm":
        return LayerSpec(FinalNorm, m)
    return LayerSpec(Block, m, int(name.removeprefix("blocks.")), seed)


def pipeline_stages(cfg: Config, layout: Layout, loss: Loss = language_model_loss) -> PipelineModule:
    m, seed = cfg.model, cfg.train.seed
    names = m.layers()
    head = isinstance(loss, HeadLoss)
    output = _output_logits_and_states if head else _output_logits
    specs = [layer_spec(name, m, seed, output if index == len(names) - 1 else None) for index, name in enumerate(names)]
    return PipelineModule(
        layers=specs,
        loss_fn=loss if not head or layout.pp_rank == layout.pp - 1 else None,  # a head: the last stage's only
        topology=PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp),
        partition_method=cfg.parallel.partition_method,
        activation_checkpoint_interval=1 if cfg.parallel.activation_checkpointing else 0,
        activation_checkpoint_func=recompute,
        checkpointable_layers=["Block"],
    )


class GPTWithStates(GPT):
    """The whole model for a `HeadLoss`: (logits, final hidden states), as the pipeline's last stage gives them."""

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.position_embedding(self.token_embedding(tokens))
        for block in self.blocks:
            hidden = block(hidden)
        return _output_logits_and_states(self.token_embedding, self.final_norm(hidden))


def whole_model(cfg: Config, loss: Loss = language_model_loss) -> GPT:
    if isinstance(loss, HeadLoss):
        model = GPTWithStates(cfg.model, cfg.train.seed)
        model.loss_fn = loss  # a submodule, named as in the pipeline's last stage
    else:
        model = GPT(cfg.model, cfg.train.seed)
    if cfg.parallel.activation_checkpointing:
        for block in model.blocks:
            block.forward = functools.partial(recompute, block.forward)
    return model


def to_device(labels, device: torch.device):
    """Labels (a tensor or a tuple of them) on `device`."""
    if isinstance(labels, torch.Tensor):
        return labels.to(device)
    return tuple(label.to(device) for label in labels)


def deepspeed_config(cfg: Config, layout: Layout, batch_size: int) -> dict:
    t = cfg.train
    return {
        "train_batch_size": batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": batch_size // (t.micro_batch_size * layout.dp),
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {
            "enabled": cfg.precision == "fp16",
            "loss_scale": 0,  # dynamic
            "initial_scale_power": t.initial_loss_scale_power,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def adam_with_decoupled_decay(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay applies to matrices only, not to biases and LayerNorm parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.train.lr, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
        eps=cfg.train.adam_eps, fused=device.type == "cuda",
    )


class MegatronGroups:
    """The `mpu` interface DeepSpeed's plain engine asks for, answered by megatron-core.

    Used at PP = 1 only, where DeepSpeed's "model parallel" group is the TP group."""

    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_src_rank = staticmethod(parallel_state.get_tensor_model_parallel_src_rank)
    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)


def allow_fp16_on_cpu() -> None:
    """DeepSpeed's CPU accelerator refuses fp16 unless oneDNN has native fp16 kernels.

    torch computes fp16 on any CPU (slowly); fp16 on a CPU serves to test the GPU
    recipe (dynamic loss scaling, overflow skips) where no GPU is at hand."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        accelerator.is_fp16_supported = lambda: True


class ParallelEngine:
    """One interface over DeepSpeed's pipeline engine (PP > 1) and its plain engine (PP = 1)."""

    def __init__(self, cfg: Config, layout: Layout, batch_size: int, loss: Loss = language_model_loss):
        if cfg.precision == "fp16":
            allow_fp16_on_cpu()
        self.layout = layout
        self.pipelined = layout.pp > 1
        self.loss = loss
        model = pipeline_stages(cfg, layout, loss) if self.pipelined else whole_model(cfg, loss)
        model.to(layout.device)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model,
            optimizer=adam_with_decoupled_decay(model, cfg, layout.device),
            config=deepspeed_config(cfg, layout, batch_size),
            mpu=None if self.pipelined else MegatronGroups,
        )

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def set_batch_size(self, batch_size: int) -> None:
        if batch_size != self.engine.train_batch_size():
            self.engine.set_train_batch_size(batch_size)

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, micro_batches: list[MicroBatch]) -> float:
        """Forward and backward over this rank's micro-batches, then one optimizer step.

        Returns the loss averaged over micro-batches and data-parallel ranks."""
        self.engine.train()
        if self.pipelined:
            return self.engine.train_batch(iter(micro_batches)).item()
        losses = []
        for index, (tokens, labels) in enumerate(micro_batches):
            # Say where the boundary is: DeepSpeed's micro-step counter misplaces it once the
            # batch-size ramp changes the number of micro-batches.
            self.engine.set_gradient_accumulation_boundary(index == len(micro_batches) - 1)
            loss = self._micro_batch_loss(tokens, labels)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
        return self._data_parallel_mean(torch.stack(losses).mean())

    @torch.no_grad()
    def eval_loss(self, micro_batches: list[MicroBatch]) -> float:
        if self.pipelined:
            loss = self.engine.eval_batch(iter(micro_batches), num_micro_batches=len(micro_batches))
            return loss.item()
        self.engine.eval()
        losses = [self._micro_batch_loss(tokens, labels).float() for tokens, labels in micro_batches]
        self.engine.train()
        return self._data_parallel_mean(torch.stack(losses).mean())

    def _micro_batch_loss(self, tokens: torch.Tensor, labels) -> torch.Tensor:
        """The plain engine's forward and loss (the pipeline engine runs its `loss_fn` itself)."""
        return self.loss(self.engine(tokens.to(self.layout.device)), to_device(labels, self.layout.device))

    def _data_parallel_mean(self, value: torch.Tensor) -> float:
        if self.layout.dp > 1:
            dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
            value = value / self.layout.dp
        return value.item()

    @property
    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def loss_scale(self) -> float:
        scale = getattr(self.engine.optimizer, "cur_scale", None) or getattr(self.engine.optimizer, "loss_scale", None)
        return float(scale) if scale else 1.0

    @property
    def skipped_steps(self) -> int:
        return int(self.engine.skipped_steps)
