"""Generation on our own GPT: the cached decoder against the model's own forward pass."""
import subprocess
import sys

import pytest
import torch

from training.config import ModelConfig
from training.generation import Sampling, forward, generate, left_pad, next_token
from training.model import GPT
from tests.training.launch import REPO


def model(arch: str = "gpt3", seed: int = 3) -> GPT:
    cfg = ModelConfig(arch=arch, n_layers=3, d_model=32, n_heads=4, seq_length=48, vocab_size=300,
                      dropout=0.0, sparse_every=2, sparse_offset=1, sparse_window=5)
    return GPT(cfg, seed).eval()


PROMPTS = [[5, 17, 230, 41, 9, 88, 120], [201, 3], [7, 7, 19, 250]]


@torch.no_grad()
def test_padded_forward_equals_the_models_forward():
    gpt = model()
    tokens = torch.randint(0, 300, (2, 30), generator=torch.Generator().manual_seed(0))
    full = forward(gpt, tokens, torch.ones_like(tokens, dtype=torch.bool), None)
    torch.testing.assert_close(full, gpt(tokens)[..., :300], rtol=1e-5, atol=1e-5)
    # a left-padded prompt gives the same logits as the prompt alone (positions start at its first token)
    padded, valid = left_pad([tokens[0, :30].tolist(), tokens[1, :12].tolist()], pad_id=0)
    batch = forward(gpt, padded, valid, None)
    torch.testing.assert_close(batch[1, -12:], gpt(tokens[1:, :12])[0, :, :300], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_kv_cache_equals_recomputing_the_prefix():
    for arch in ("gpt3", "gpt1"):  # banded sparse layers and pre-LN; post-LN GPT-1 blocks
        gpt = model(arch)
        greedy = Sampling(greedy=True)
        cached = generate(gpt, PROMPTS, 30, greedy)
        assert cached == generate(gpt, PROMPTS, 30, greedy, use_cache=False)
        assert [len(c) for c in cached] == [30, 30, 30]
        # each prompt alone decodes the same as in the left-padded batch
        assert [generate(gpt, [p], 30, greedy)[0] for p in PROMPTS] == cached
        sampled = Sampling(seed=11, top_k=0)
        assert generate(gpt, PROMPTS, 20, sampled) == generate(gpt, PROMPTS, 20, sampled, use_cache=False)


@torch.no_grad()
def test_cached_logits_match_step_by_step():
    from training.generation import KVCache

    gpt = model()
    tokens, valid = left_pad(PROMPTS, pad_id=0)
    cache = KVCache()
    forward(gpt, tokens[:, :4], valid[:, :4], cache)
    steps = [forward(gpt, tokens[:, i:i + 1], valid[:, i:i + 1], cache) for i in range(4, tokens.shape[1])]
    whole = forward(gpt, tokens, valid, None)
    torch.testing.assert_close(torch.cat(steps, 1), whole[:, 4:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_sampling_is_reproducible_for_a_seed():
    gpt = model()
    options = Sampling(seed=5, temperature=0.9, top_k=40, top_p=0.95)
    first = generate(gpt, PROMPTS, 25, options)
    assert first == generate(gpt, PROMPTS, 25, options)
    assert first != generate(gpt, PROMPTS, 25, Sampling(seed=6, temperature=0.9, top_k=40, top_p=0.95))
    # top-k 1 and a tiny nucleus both reduce sampling to the argmax
    greedy = generate(gpt, PROMPTS, 25, Sampling(greedy=True))
    assert generate(gpt, PROMPTS, 25, Sampling(seed=1, top_k=1)) == greedy
    assert generate(gpt, PROMPTS, 25, Sampling(seed=1, top_k=0, top_p=1e-6)) == greedy


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.06, 0.04]])).repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    top2 = next_token(logits, Sampling(top_k=2), generator)
    assert set(top2.tolist()) == {0, 1}
    assert abs((top2 == 0).float().mean().item() - 2 / 3) < 0.03  # renormalised 0.5 / 0.75
    nucleus = next_token(logits, Sampling(top_k=0, top_p=0.8), generator)  # 0.5 + 0.25 < 0.8: third token kept
    assert set(nucleus.tolist()) == {0, 1, 2}


@torch.no_grad()
def test_generation_stops_at_end_of_text_and_stop_condition():
    gpt = model()
    free = generate(gpt, PROMPTS, 20, Sampling(greedy=True))
    eod = free[0][5]
    stopped = generate(gpt, PROMPTS, 20, Sampling(greedy=True), eod_id=eod)
    assert stopped[0] == free[0][: free[0].index(eod) + 1]
    short = generate(gpt, PROMPTS, 20, Sampling(greedy=True), stop=lambda new: len(new) >= 3)
    assert short == [f[:3] for f in free]


def test_temperature_divides_the_logits_before_top_p():
    """Sample frequencies follow softmax(logits / T); the nucleus is taken after the temperature."""
    probs = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])
    logits = probs.log()[None].repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.5, 2.0):
        drawn = next_token(logits, Sampling(temperature=temperature, top_k=0), generator)
        frequencies = torch.bincount(drawn, minlength=5).float() / len(drawn)
        expected = (probs.log() / temperature).softmax(-1)  # T 0.5: [0.735, 0.184, ...], T 2: [0.347, 0.245, ...]
        assert (frequencies - expected).abs().max() < 0.015, (temperature, frequencies, expected)
    # top-p 0.8 keeps 2 tokens at T 0.5 (0.735 + 0.184), 3 at T 1 (0.5 + 0.25 + 0.15), 4 at T 2
    for temperature, kept in ((0.5, 2), (1.0, 3), (2.0, 4)):
        drawn = next_token(logits[:4000], Sampling(temperature=temperature, top_k=0, top_p=0.8), generator)
        assert set(drawn.tolist()) == set(range(kept)), temperature


def test_defaults_are_gpt2s_top_k_40_at_temperature_1():
    from tools.generate import build_parser

    args = build_parser().parse_args(["--checkpoint", "ckpt", "--prompt", "Hello"])
    assert (args.greedy, args.temperature, args.top_k, args.top_p) == (False, 1.0, 40, 1.0)
    assert Sampling() == Sampling(greedy=False, temperature=1.0, top_k=40, top_p=1.0, seed=0)
    # by default, nearly flat logits over 100 tokens are sampled among exactly the 40 likeliest
    logits = torch.linspace(0.0, -0.5, 100)[torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    drawn = next_token(logits[None].repeat(8000, 1), Sampling(), torch.Generator().manual_seed(2))
    assert set(drawn.tolist()) == set(logits.topk(40).indices.tolist())


@pytest.mark.parametrize("ids, wrong", [("464,50300", 50300), ("70000", 70000)])
def test_prompt_ids_outside_the_vocabulary_are_refused_before_the_model_loads(capsys, tmp_path, ids, wrong):
    """50300 is a padded row of the model (50304 rows at TP1), not one of GPT-2's 50257 tokens;
    no checkpoint exists at all: the ids are checked before the ~10 s model load."""
    from tools.generate import main as gpt_generate

    assert gpt_generate(["--checkpoint", str(tmp_path / "none"), "--prompt-ids", ids]) == 2
    assert capsys.readouterr().err == \
        f"gpt-generate: error: --prompt-ids: {wrong} is not a token id (the tokenizer has ids 0 to 50256)\n"


def test_a_tool_error_is_its_whole_output(tmp_path):
    """No third-party start-up noise (Transformer Engine/Apex, DeepSpeed's accelerator) around it."""
    result = subprocess.run([sys.executable, "-m", "tools.generate", "--checkpoint", str(tmp_path / "none"),
                             "--prompt-ids", "1,-5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "gpt-generate: error: --prompt-ids: -5 is not a token id (the tokenizer has ids 0 to 50256)\n"
