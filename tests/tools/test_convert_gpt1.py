"""GPT-1 in and out: gpt-convert against transformers' own OpenAIGPTLMHeadModel (random, nothing downloaded)."""
import math

import pytest
import torch
from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

from common.errors import UserError
from tests.tools.test_convert import real_tokens
from tools.convert import from_hf, to_hf
from tools.model_source import save_trunk
from training.config import ModelConfig
from training.consolidated import load_gpt
from training.model import GPT

VOCAB = 611  # not a multiple of the padding: padded rows must stay out of the softmax


def random_gpt1(path, layers: int = 3, d: int = 48, heads: int = 4, positions: int = 64) -> OpenAIGPTLMHeadModel:
    torch.manual_seed(1)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=VOCAB, n_positions=positions, n_embd=d, n_layer=layers,
                                                 n_head=heads)).eval()
    with torch.no_grad():  # LayerNorms start at 1/0 and biases at 0: make every tensor count
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 3)])
def test_gpt1_from_hf_and_back_keeps_logits(tmp_path, tp, pp):
    hf = random_gpt1(tmp_path / "hf")
    from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), tp, pp)
    ours, cfg = load_gpt(tmp_path / "ours")
    assert cfg.model.arch == "gpt1" and isinstance(ours.final_norm, torch.nn.Identity)
    tokens = real_tokens(VOCAB, 64)
    with torch.no_grad():
        reference = hf(tokens).logits
        logits = ours(tokens)
    assert (logits[..., :VOCAB] - reference).abs().max() < 1e-4
    assert (logits.log_softmax(-1)[..., :VOCAB] - reference.log_softmax(-1)).abs().max() < 1e-4

    to_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
    back = OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "back").eval()
    assert back.config.model_type == "openai-gpt" and back.config.vocab_size == VOCAB
    with torch.no_grad():
        assert (back(tokens).logits - reference).abs().max() < 1e-4


def test_our_gpt1_loads_in_transformers_with_equal_logits(tmp_path):
    """A GPT-1 built by our trainer (not one that came from transformers) exports as OpenAIGPT, same logits."""
    model = GPT(ModelConfig(arch="gpt1", n_layers=2, d_model=32, n_heads=4, seq_length=32, vocab_size=VOCAB,
                            dropout=0.0), seed=5).eval()
    with torch.no_grad():  # LayerNorms at 1/0 would hide a swapped ln_1/ln_2
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    to_hf(str(save_trunk(model, tmp_path / "ours")), str(tmp_path / "hf"))
    hf = OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tokens = real_tokens(VOCAB, 32)
    with torch.no_grad():
        assert (model(tokens)[..., :VOCAB] - hf(tokens).logits).abs().max() < 1e-4


def test_gpt1_refusals(tmp_path):
    """transformers' GPT-1 MLP is 4 x d_model, and only its tanh GELU ("gelu") is ours."""
    model = GPT(ModelConfig(arch="gpt1", n_layers=1, d_model=32, n_heads=4, seq_length=16, vocab_size=VOCAB,
                            ffn_multiplier=2), seed=0)
    with pytest.raises(UserError, match="MLP is 4 x d_model"):
        to_hf(str(save_trunk(model, tmp_path / "wide")), str(tmp_path / "out"))
    OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=1, n_head=4,
                                         afn="relu")).save_pretrained(tmp_path / "relu")
    with pytest.raises(UserError, match="activation 'relu' is not GPT-1's tanh GELU"):
        from_hf(str(tmp_path / "relu"), str(tmp_path / "out"), 1, 1)


def test_gpt1_initialises_without_residual_scaling():
    """GPT-1's paper: every weight N(0, 0.02). GPT-2 (same draws) divides the residual projections by sqrt(2 L)."""
    layers = 4
    shape = {"n_layers": layers, "d_model": 64, "n_heads": 4, "seq_length": 16, "vocab_size": VOCAB}
    gpt1, gpt2 = (dict(GPT(ModelConfig(arch=arch, **shape), seed=3).named_parameters()) for arch in ("gpt1", "gpt2"))
    for layer in range(layers):
        for name in (f"blocks.{layer}.attention.proj.weight", f"blocks.{layer}.mlp.proj.weight"):
            assert abs(gpt1[name].std().item() - 0.02) < 0.002
            torch.testing.assert_close(gpt2[name], gpt1[name] / math.sqrt(2 * layers))
        for name in (f"blocks.{layer}.attention.qkv.weight", f"blocks.{layer}.mlp.fc.weight"):
            assert abs(gpt1[name].std().item() - 0.02) < 0.002 and torch.equal(gpt1[name], gpt2[name])
