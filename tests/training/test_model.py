"""The model itself, in one process: attention, initialisation, tying, GPT-1 vs GPT-2 blocks, dropout RNG."""
import math

import pytest
import torch
import torch.nn.functional as F

from training.config import ModelConfig
from training.distributed import init_distributed, shutdown
from training.model import GPT, Block, CausalSelfAttention, banded_causal_mask, language_model_loss
from training.parallel import recompute
from training.rng import seed_everything, tensor_parallel_rng


@pytest.fixture(scope="module", autouse=True)
def one_process_group():
    init_distributed(tp=1, pp=1)
    yield
    shutdown()


def tiny(**changes) -> ModelConfig:
    cfg = ModelConfig(arch="gpt3", n_layers=2, d_model=32, n_heads=4, seq_length=24, vocab_size=300,
                      dropout=0.0, sparse_every=2, sparse_offset=1, sparse_window=5)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def reference_attention(attention: CausalSelfAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Textbook masked softmax attention with the module's weights (per-head [q|k|v] layout)."""
    b, s, _ = x.shape
    heads, d = attention.heads_per_rank, attention.head_dim
    qkv = x @ attention.qkv.weight.T + attention.qkv.bias
    qkv = qkv.view(b, s, heads, 3, d)
    q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, heads * d)
    return y @ attention.proj.weight.T + attention.proj.bias


def test_sparse_layer_equals_dense_attention_under_the_band_mask():
    cfg = tiny()
    x = torch.randn(3, cfg.seq_length, cfg.d_model)
    sparse = CausalSelfAttention(cfg, layer=1, seed=0).eval()
    band = banded_causal_mask(cfg.seq_length, cfg.sparse_window)
    torch.testing.assert_close(sparse(x), reference_attention(sparse, x, band), rtol=1e-5, atol=1e-6)
    # and it really is sparse: the dense layer (same weights) sees further back and differs
    dense = CausalSelfAttention(cfg, layer=0, seed=0).eval()
    dense.load_state_dict(sparse.state_dict())
    causal = banded_causal_mask(cfg.seq_length, cfg.seq_length)
    torch.testing.assert_close(dense(x), reference_attention(dense, x, causal), rtol=1e-5, atol=1e-6)
    assert (dense(x) - sparse(x)).abs().max() > 1e-3


def test_band_mask_shape():
    mask = banded_causal_mask(6, 3)
    assert mask.tolist()[5] == [False, False, False, True, True, True]
    assert mask.tolist()[1] == [True, True, False, False, False, False]


def test_gpt2_initialisation_and_tied_output():
    cfg = tiny(n_layers=8, d_model=128, n_heads=4, vocab_size=1000)
    model = GPT(cfg, seed=7)
    block = model.blocks[3]
    assert block.attention.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert block.attention.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.count_nonzero(block.attention.qkv.bias) == 0
    # one output matrix only: the token embedding (padded to 1024 rows) doubles as the LM head
    assert model.token_embedding.weight.shape == (cfg.padded_vocab_size(1), cfg.d_model) == (1024, 128)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters(tp=1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 10))
    hidden = model.position_embedding(model.token_embedding(tokens))
    for block in model.blocks:
        hidden = block(hidden)
    expected = model.final_norm(hidden) @ model.token_embedding.weight.T
    torch.testing.assert_close(model(tokens)[..., :1000], expected[..., :1000], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt1", "gpt3"])
def test_layer_list_is_the_forward_order(arch):
    """`ModelConfig.layers()` (what pipeline stages, checkpoint names and the memory model read) runs as GPT.forward."""
    model = GPT(tiny(arch=arch), seed=3).eval()
    tokens = torch.randint(0, 300, (2, 16))
    names = model.cfg.layers()
    x = tokens
    for index, name in enumerate(names):
        layer = model.get_submodule(name)
        x = layer.logits(x) if index == len(names) - 1 else layer(x)
    assert torch.equal(x, model(tokens))
    assert names.count("token_embedding") == 2 and ("final_norm" in names) == (arch != "gpt1")


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = GPT(tiny(), seed=1), GPT(tiny(), seed=1), GPT(tiny(), seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.std() > 0:
            assert not torch.equal(pa, pc), name


def test_a_model_built_without_initialisation_draws_nothing_and_keeps_its_parallel_attributes(monkeypatch):
    """What checkpoint loaders build: no weight drawn (no generator made), the same parameters with megatron-core's
    tensor-parallel attributes; building afterwards initialises again."""
    import training.model as model_module

    drawn, generator = [], torch.Generator
    monkeypatch.setattr(model_module.torch, "Generator", lambda *a: drawn.append(1) or generator(*a))
    with model_module.without_initialisation():
        bare = GPT(tiny(), seed=1)
    assert not drawn
    seeded = GPT(tiny(), seed=1)
    assert drawn
    assert [n for n, _ in bare.named_parameters()] == [n for n, _ in seeded.named_parameters()]
    for (name, a), b in zip(bare.named_parameters(), seeded.parameters()):
        assert (a.shape, getattr(a, "tensor_model_parallel", None), getattr(a, "partition_dim", None)) == \
            (b.shape, getattr(b, "tensor_model_parallel", None), getattr(b, "partition_dim", None)), name


def test_gpt1_is_post_norm_and_gpt2_pre_norm():
    x = torch.randn(2, 8, 32)
    for arch in ("gpt1", "gpt2"):
        block = Block(tiny(arch=arch, sparse_every=0), layer=0, seed=3).eval()
        a, m = block.attention, block.mlp
        if arch == "gpt1":
            h = block.ln_1(x + a(x))
            expected = block.ln_2(h + m(h))
        else:
            h = x + a(block.ln_1(x))
            expected = h + m(block.ln_2(h))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
    assert isinstance(GPT(tiny(arch="gpt1"), 0).final_norm, torch.nn.Identity)


def test_loss_is_cross_entropy_over_the_real_vocabulary():
    logits = torch.randn(2, 5, 300)
    labels = torch.randint(0, 300, (2, 5))
    expected = F.cross_entropy(logits.reshape(-1, 300), labels.reshape(-1))
    torch.testing.assert_close(language_model_loss(logits, labels), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_vocabulary_padding_is_not_part_of_the_model(dtype):
    """The same weights padded to 384 rows and unpadded (300) give the same loss and gradients; the padded
    rows get none, and the mask stays finite in half precision (no NaN)."""
    unpadded, padded = GPT(tiny(make_vocab_size_divisible_by=1), seed=3), GPT(tiny(), seed=3)
    assert (unpadded.token_embedding.weight.shape[0], padded.token_embedding.weight.shape[0]) == (300, 384)
    with torch.no_grad():
        for a, b in zip(unpadded.parameters(), padded.parameters()):
            a.copy_(b[: a.shape[0]])
    tokens = torch.randint(0, 300, (2, 25), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (unpadded.to(dtype), padded.to(dtype)):
        loss = language_model_loss(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        results.append((loss.item(), [p.grad.float() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-6) and math.isfinite(loss_b)  # measured: equal
    assert not grads_b[0][300:].any()  # the padded rows of the tied embedding
    for a, b in zip(grads_a, grads_b):  # measured: 4e-7 of the largest value in fp32, equal in bf16/fp16
        assert (b[: a.shape[0]] - a).abs().max() <= 1e-5 * a.abs().max()


def test_tensor_parallel_rng_is_a_separate_stream():
    seed_everything(5, pp_rank=0, dp_rank=0, tp_rank=0)
    with tensor_parallel_rng().fork():
        tp0 = torch.rand(4)
    after_fork = torch.rand(4)
    seed_everything(5, pp_rank=0, dp_rank=0, tp_rank=0)
    assert torch.equal(torch.rand(4), after_fork)  # forking leaves the shared stream untouched
    seed_everything(5, pp_rank=0, dp_rank=0, tp_rank=1)
    with tensor_parallel_rng().fork():
        tp1 = torch.rand(4)
    assert not torch.equal(tp0, tp1)  # each TP rank drops different attention weights


def test_activation_recomputation_replays_dropout_exactly():
    cfg = tiny(dropout=0.3)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length))
    grads = []
    for recompute_blocks in (False, True):
        seed_everything(11, 0, 0, 0)
        model = GPT(cfg, seed=4).train()
        if recompute_blocks:
            for block in model.blocks:
                block.forward = (lambda f: lambda x: recompute(f, x))(block.forward)
        loss = language_model_loss(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == grads[1][0]
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g0, g1, rtol=0, atol=0)


def test_weight_decay_spares_biases_and_layer_norms():
    from training.config import Config
    from training.parallel import adam_with_decoupled_decay

    cfg = Config(model=tiny())
    model = GPT(cfg.model, seed=0)
    decay, no_decay = adam_with_decoupled_decay(model, cfg, torch.device("cpu")).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith("weight") and "ln" not in n for n in (names[id(p)] for p in decay["params"]))
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"weight", "bias"}
    assert all("ln" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"])
    assert (decay["betas"], decay["eps"]) == ((0.9, 0.95), 1e-8)


def test_flops_count_matches_narayanan_et_al():
    """72·s·l·h²·(1 + s/6h) + 6·s·h·V per sequence (Narayanan et al. 2021, no recomputation; dense
    layers only: tests/test_plan.py checks GPT-3's banded ones)."""
    from training.config import load_config
    from training.metrics import training_flops_per_token
    from tests.training.launch import REPO

    m = load_config(REPO / "configs/gpt3/175b.yaml", ["model.sparse_every=0"]).model
    s, l, h, v = m.seq_length, m.n_layers, m.d_model, m.vocab_size
    expected = (72 * s * l * h**2 * (1 + s / (6 * h)) + 6 * s * h * v) / s
    assert training_flops_per_token(m) == pytest.approx(expected, rel=1e-12)
    assert training_flops_per_token(m) == pytest.approx(6 * 175e9, rel=0.1)  # the 6N rule of thumb
