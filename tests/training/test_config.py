"""Configs: the paper's model sizes, and one clear line for every mistake before anything starts."""
import re
import subprocess
import sys

import pytest

from tests.training.launch import REPO
from training.config import ConfigError, check_layout, load_config
from training.memory import check_stages

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name, params", [
    ("gpt3/125m", 125e6), ("gpt3/350m", 350e6), ("gpt3/760m", 760e6), ("gpt3/1.3b", 1.3e9),
    ("gpt3/2.7b", 2.7e9), ("gpt3/6.7b", 6.7e9), ("gpt3/13b", 13e9), ("gpt3/175b", 175e9),
    ("gpt2/117m", 124e6), ("gpt2/345m", 355e6), ("gpt2/762m", 774e6), ("gpt2/1.5b", 1558e6),
    ("gpt1/117m", 117e6),
])
def test_parameter_counts_match_the_papers(name, params):
    # GPT-2's paper undercounted its own models; the numbers here are the released checkpoints'.
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.num_parameters() == pytest.approx(params, rel=0.03)


def test_gpt3_175b_hyperparameters():
    cfg = load_config(CONFIGS / "gpt3/175b.yaml")
    m, t = cfg.model, cfg.train
    assert (m.n_layers, m.d_model, m.n_heads, m.head_dim, m.seq_length) == (96, 12288, 96, 128, 2048)
    assert t.global_batch_size * m.seq_length == pytest.approx(3.2e6, rel=0.02)
    assert t.lr == 0.6e-4 and (t.adam_beta1, t.adam_beta2, t.adam_eps) == (0.9, 0.95, 1e-8)
    assert (t.grad_clip, t.weight_decay, t.warmup_tokens, t.decay_tokens) == (1.0, 0.1, 375e6, 260e9)
    assert m.is_sparse_layer(1) and not m.is_sparse_layer(0)


def test_overrides_are_typed():
    cfg = load_config(CONFIGS / "gpt3/125m.yaml", ["parallel.tp=2", "train.lr=1e-4", "precision=fp16",
                                                   "parallel.activation_checkpointing=false"])
    assert cfg.parallel.tp == 2 and cfg.train.lr == 1e-4 and cfg.precision == "fp16"
    assert cfg.parallel.activation_checkpointing is False


@pytest.mark.parametrize("overrides, message", [
    (["parallel.tpp=2"], "unknown config key 'parallel.tpp'"),
    (["modle.n_layers=2"], "unknown config key 'modle'"),
    (["train.steps=many"], "'train.steps' must be int"),
    (["parallel.tp=5"], "model.n_heads=12 is not divisible by parallel.tp=5"),
    (["parallel.pp=13"], "model.n_layers=12 is not divisible by parallel.pp=13"),
    (["parallel.pp=5"], "model.n_layers=12 is not divisible by parallel.pp=5"),
    (["parallel.timeout_minutes=0"], "parallel.timeout_minutes must be > 0"),
    (["parallel.pp=2", "parallel.zero_stage=2"], "supports ZeRO stage 0 or 1 only"),
    (["precision=fp8"], "precision must be one of"),
    (["precision=bf16", "parallel.zero_stage=0"], "precision=bf16 with parallel.zero_stage=0: DeepSpeed's 16-bit"),
    (["precision=fp16", "parallel.zero_stage=0"], "precision=fp16 with parallel.zero_stage=0"),
    (["train.global_batch_size"], "is not of the form key=value"),
])
def test_config_errors_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(CONFIGS / "gpt3/125m.yaml", overrides)


def test_layout_errors_name_the_problem():
    cfg = load_config(CONFIGS / "gpt3/125m.yaml", ["parallel.tp=2", "parallel.pp=2", "train.micro_batch_size=4"])
    assert check_layout(cfg, 8) == 2
    with pytest.raises(ConfigError, match="world size 6 is not divisible by parallel.tp x parallel.pp = 2 x 2"):
        check_layout(cfg, 6)
    with pytest.raises(ConfigError, match=r"batch size 256 is not divisible by .* = 4 x 3"):
        check_layout(cfg, 12)


def test_a_pipeline_stage_without_transformer_blocks_is_refused():
    """DeepSpeed cannot train a stage of embeddings alone: the stages run different collectives and hang."""
    def stages(name, *overrides):
        check_stages(load_config(CONFIGS / name, ["model.vocab_size=50257", *overrides]))

    for method in ("parameters", "uniform"):  # the tests' PP2 layouts: 2 blocks per stage either way
        stages("tiny/gpt3_tiny.yaml", "parallel.pp=2", f"parallel.partition_method={method}")
        with pytest.raises(ConfigError, match=f"parallel.pp=4 with parallel.partition_method={method} leaves "
                                              "pipeline stage 0, 3 without a transformer block, .*; use fewer stages$"):
            stages("tiny/gpt3_tiny.yaml", "parallel.pp=4", f"parallel.partition_method={method}")
    # GPT-3 125M on 4 stages: cut by parameters, the 38M-parameter embedding fills stage 0 alone
    with pytest.raises(ConfigError, match="stage 0, 3 .* use fewer stages or parallel.partition_method=uniform$"):
        stages("gpt3/125m.yaml", "parallel.pp=4")
    stages("gpt3/125m.yaml", "parallel.pp=4", "parallel.partition_method=uniform")


@pytest.mark.parametrize("overrides, message", [
    (["parallel.tp=3"], r"model\.n_heads=4 is not divisible by parallel\.tp=3"),
    (["parallel.pp=3"], r"model\.n_layers=4 is not divisible by parallel\.pp=3"),
    # The memory model (training/memory.py, also gpt-plan's) refuses a layout that cannot fit
    # the device before anything is allocated: the tiny model with DeepSpeed's default reduce
    # bucket (~1.9 GiB) does not fit the 1 GiB left of a 5 GiB device after the reserve.
    (["parallel.device_memory_gb=5"], r"layout tp=1 pp=1 dp=1 .* needs [0-9.]+ GiB per GPU .* "
                                      r"but 5(\.0)? GiB - 4 GiB reserve is available; run `gpt-plan`.*"),
])
def test_trainer_refuses_a_bad_layout_in_one_line_before_starting(tmp_path, overrides, message):
    run_dir = tmp_path / "never-created"
    result = subprocess.run(
        [sys.executable, "-m", "training.pretrain", "--config", str(CONFIGS / "tiny/gpt3_tiny.yaml"),
         "--run-dir", str(run_dir), "--set", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    # the whole output: no third-party start-up noise (Transformer Engine/Apex, DeepSpeed's accelerator)
    assert re.fullmatch("training.pretrain: error: " + message + "\n", result.stderr), result.stderr
    assert result.stdout == ""
    assert not run_dir.exists()


def test_untested_deepspeed_is_refused_before_any_rank_starts(monkeypatch):
    """The trainer hooks DeepSpeed internals (training/deepspeed_compat.py): another series is one line."""
    from common.errors import UserError
    from training import deepspeed_compat

    deepspeed_compat.check_version()  # the installed one is tested
    monkeypatch.setattr(deepspeed_compat, "version", lambda name: "0.20.1")
    with pytest.raises(UserError, match=r"DeepSpeed 0\.20\.1 is untested.*deepspeed>=0\.19,<0\.20"):
        deepspeed_compat.check_version()
