"""Run configuration: YAML + `--set key=value` overrides -> one validated, typed object.

Everything that can be checked without a process group is checked here, so that a
wrong key or an impossible layout fails in one line before any rank starts work.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.errors import ConfigError
from common.options import build


# Query positions per block of `model.banded_attention`. Each block computes window + BAND_CHUNK key
# scores per query of which `window` are in the band: smaller blocks waste less but run more,
# smaller matmuls and copy the keys and values (window + BAND_CHUNK) / BAND_CHUNK times. At
# GPT-3's window 256 on CPU, 128 and 64 were fastest (0.45x dense causal attention, 256: 0.53x;
# bench/bench_attention.py); 128 keeps 3 copies instead of 5. (Here: the memory model counts the copies.)
BAND_CHUNK = 128


@dataclass
class ModelConfig:
    arch: str = "gpt3"  # gpt1: post-LayerNorm blocks; gpt2/gpt3: pre-LayerNorm + final LayerNorm
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_head: int = 0  # 0: d_model // n_heads
    seq_length: int = 2048
    vocab_size: int = 50257  # 0: take it from the blend's tokenizer
    make_vocab_size_divisible_by: int = 128  # padded vocab is a multiple of this x TP
    ffn_multiplier: int = 4
    dropout: float = 0.1
    init_std: float = 0.02
    # GPT-3's locally banded sparse attention: layers with index % sparse_every == sparse_offset
    # attend only to the previous `sparse_window` tokens. 0 disables it (all layers dense).
    sparse_every: int = 0
    sparse_offset: int = 1
    sparse_window: int = 256

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    def padded_vocab_size(self, tp: int) -> int:
        multiple = self.make_vocab_size_divisible_by * tp
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def layers(self) -> list[str]:
        """The model's layers in forward order (`training.model.GPT.forward`), as pipeline stages cut
        them, checkpoints name their parameters and the memory model counts them: the token
        embedding, positions, blocks, the final norm (not GPT-1), and the token embedding again,
        tied, as the output layer."""
        return ["token_embedding", "position_embedding", *(f"blocks.{i}" for i in range(self.n_layers)),
                *(["final_norm"] if self.arch != "gpt1" else []), "token_embedding"]

    def is_sparse_layer(self, layer: int) -> bool:
        return self.sparse_every > 0 and layer % self.sparse_every == self.sparse_offset

    def num_parameters(self, tp: int = 1) -> int:
        """Total parameters (embedding counted once: it is tied to the output layer)."""
        h, inner, ffn = self.d_model, self.n_heads * self.head_dim, self.ffn_multiplier * self.d_model
        per_layer = (h * 3 * inner + 3 * inner) + (inner * h + h) + (h * ffn + ffn) + (ffn * h + h) + 4 * h
        embeddings = self.padded_vocab_size(tp) * h + self.seq_length * h
        return self.n_layers * per_layer + embeddings + 2 * h


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    zero_stage: int = 1
    activation_checkpointing: bool = False  # recompute each transformer block in backward
    partition_method: str = "parameters"  # DeepSpeed pipeline partitioning: parameters | uniform
    # Per-device memory the layout must fit in (training/memory.py's model), checked before
    # anything is allocated. 0: the GPU's own size; no check on CPU.
    device_memory_gb: float = 0.0
    # How long a rank waits in a collective for the others; past it the run ends with an error
    # (a rank that hangs or died must not leave the others waiting forever).
    timeout_minutes: float = 30.0


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch_size: int = 256  # sequences per optimizer step (x seq_length = tokens)
    micro_batch_size: int = 1
    seed: int = 1234
    lr: float = 6.0e-4
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of lr
    warmup_tokens: int = 375_000_000
    decay_tokens: int = 260_000_000_000
    # Batch-size ramp (GPT-3: from 32k tokens up over the first 4-12B tokens). 0 disables.
    rampup_start_batch_size: int = 0
    rampup_batch_increment: int = 0
    rampup_tokens: int = 0
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1.0e-8
    grad_clip: float = 1.0
    initial_loss_scale_power: int = 16  # fp16 only: dynamic loss scale starts at 2^this
    exit_interval: int = 0  # save and exit 0 after every this many steps (a job-length budget); 0: never
    # Bad steps: a NaN/Inf loss, or one above spike_threshold x the mean of the last spike_window good
    # steps (0: no spike test), has its update skipped. After bad_step_limit in a row: rollback (reload
    # the last checkpoint and skip the data since) or stop.
    spike_threshold: float = 0.0
    spike_window: int = 50
    bad_step_limit: int = 5
    bad_step_policy: str = "rollback"


@dataclass
class DataConfig:
    blend: str = ""  # blend JSON written by `gpt-data mixture` (sources with prefixes and weights)
    split: str = "969,30,1"  # train,valid,test documents per 1000
    cache_dir: str = ""  # megatron-core dataset index cache; default <run_dir>/data_cache


@dataclass
class LoggingConfig:
    interval: int = 1  # steps between metrics.jsonl lines
    eval_interval: int = 0  # steps between validation runs; 0: only at the end
    eval_iters: int = 4  # validation batches of train.global_batch_size sequences
    tensorboard: bool = True
    peak_tflops: float = 0.0  # per device, for MFU; 0: the GPU's datasheet peak (training/metrics.py), measured on CPU
    # Weights & Biases, next to TensorBoard (rank 0; needs the `wandb` extra): the project to log to; "": off.
    # WANDB_MODE=offline writes the run under the run directory (or WANDB_DIR) without a network.
    wandb_project: str = ""
    wandb_run_name: str = ""  # "": W&B picks a name


@dataclass
class CheckpointConfig:
    dir: str = ""  # default <run_dir>/checkpoints
    interval: int = 0  # steps between saves; 0: only at the end
    keep_last: int = 0  # keep only the newest N checkpoints (plus every keep_every-th step); 0: keep all
    keep_every: int = 0
    load: str = ""  # start from this checkpoint when checkpoint.dir has none (e.g. `gpt-convert from-hf` output)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    tf32: bool = True  # fp32 matmuls on TF32 tensor cores (Ampere and later GPUs); no effect on CPU

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRECISIONS = ("fp32", "bf16", "fp16")
ARCHS = ("gpt1", "gpt2", "gpt3")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (which may name a `base:` file to extend), then apply `key=value` overrides."""
    raw = _read_yaml_with_base(Path(path)) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    config = build(Config, raw)
    check_values(config)
    return config


def _read_yaml_with_base(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = _read_yaml_with_base(path.parent / base)
    _deep_update(merged, raw)
    return merged


def _deep_update(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _set_dotted(raw: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[leaf] = value


def check_values(config: Config) -> None:
    """Checks that need no knowledge of the world size."""
    m, p, t = config.model, config.parallel, config.train
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    if m.arch not in ARCHS:
        raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}, got {m.arch!r}")
    for key, value in [("model.n_layers", m.n_layers), ("model.d_model", m.d_model),
                       ("model.n_heads", m.n_heads), ("model.seq_length", m.seq_length),
                       ("parallel.tp", p.tp), ("parallel.pp", p.pp), ("train.steps", t.steps),
                       ("train.global_batch_size", t.global_batch_size),
                       ("train.micro_batch_size", t.micro_batch_size)]:
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if not m.d_head and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage must be 0, 1, 2 or 3, got {p.zero_stage}")
    if p.zero_stage == 0 and config.precision != "fp32":
        raise ConfigError(
            f"precision={config.precision} with parallel.zero_stage=0: DeepSpeed's 16-bit optimizer without ZeRO "
            "keeps the fp32 master weights and Adam state where checkpoints cannot reach them (they would not "
            "resume); use zero_stage=1 (the default; at DP 1 it shards nothing)")
    if p.partition_method not in ("parameters", "uniform"):
        raise ConfigError(f"parallel.partition_method must be parameters or uniform, got {p.partition_method!r}")
    if m.n_heads % p.tp:
        raise ConfigError(f"model.n_heads={m.n_heads} is not divisible by parallel.tp={p.tp}")
    if (m.ffn_multiplier * m.d_model) % p.tp:
        raise ConfigError(f"MLP width {m.ffn_multiplier * m.d_model} is not divisible by parallel.tp={p.tp}")
    if m.n_layers % p.pp:
        raise ConfigError(f"model.n_layers={m.n_layers} is not divisible by parallel.pp={p.pp}")
    if p.timeout_minutes <= 0:
        raise ConfigError(f"parallel.timeout_minutes must be > 0, got {p.timeout_minutes}")
    if p.pp > 1 and p.zero_stage > 1:
        raise ConfigError(
            f"parallel.zero_stage={p.zero_stage} with parallel.pp={p.pp}: DeepSpeed's pipeline engine "
            "supports ZeRO stage 0 or 1 only; use zero_stage=1 or pp=1"
        )
    if t.bad_step_policy not in ("rollback", "stop"):
        raise ConfigError(f"train.bad_step_policy must be rollback or stop, got {t.bad_step_policy!r}")
    if t.bad_step_limit < 1 or t.spike_window < 1:
        raise ConfigError("train.bad_step_limit and train.spike_window must be >= 1")
    if t.rampup_start_batch_size and (t.rampup_batch_increment < 1 or t.rampup_tokens < 1):
        raise ConfigError("train.rampup_start_batch_size needs train.rampup_batch_increment and train.rampup_tokens")
    if config.logging.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logging.wandb_project is set but wandb is not installed: pip install 'gpt-stack[wandb]'")


def check_layout(config: Config, world_size: int) -> int:
    """Check that the layout fits `world_size` processes; return the data-parallel size."""
    p, t = config.parallel, config.train
    if world_size % (p.tp * p.pp):
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tp x parallel.pp = {p.tp} x {p.pp}"
        )
    dp = world_size // (p.tp * p.pp)
    batches = [t.global_batch_size]
    if t.rampup_start_batch_size:
        batches += [t.rampup_start_batch_size, t.rampup_batch_increment]
    for batch in batches:
        if batch % (t.micro_batch_size * dp):
            raise ConfigError(
                f"batch size {batch} is not divisible by train.micro_batch_size x data-parallel size "
                f"= {t.micro_batch_size} x {dp} (world {world_size} = tp {p.tp} x pp {p.pp} x dp {dp})"
            )
    return dp
