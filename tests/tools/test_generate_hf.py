"""Generation parity with Hugging Face `transformers` on a converted, randomly initialised GPT-2."""
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tools.generate import main as gpt_generate
from tools.model_source import load_model
from training.generation import Sampling, generate

PROMPTS = [[464, 2068, 7586, 21831, 18045, 625, 262], [15496, 11], [7454, 2402, 257, 640]]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=64, n_head=4, n_positions=64, vocab_size=50257)
    model = GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("gpt2-random")
    model.save_pretrained(directory)
    return directory


def hf_greedy(directory, prompts, new_tokens):
    """transformers' own generate on a left-padded batch (its attention mask and position ids)."""
    model = GPT2LMHeadModel.from_pretrained(directory).eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[50256] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=50256)
    return out[:, width:].tolist()


@torch.no_grad()
def test_greedy_equals_transformers_token_for_token(hf_dir):
    ours = load_model(hf_dir=str(hf_dir))
    theirs = hf_greedy(hf_dir, PROMPTS, 24)
    assert generate(ours, PROMPTS, 24, Sampling(greedy=True)) == theirs
    assert [generate(ours, [p], 24, Sampling(greedy=True))[0] for p in PROMPTS] == theirs
    assert generate(ours, PROMPTS, 24, Sampling(greedy=True), use_cache=False) == theirs


def test_command_line_writes_tokens_and_text(hf_dir, tmp_path):
    out = tmp_path / "out.json"
    assert gpt_generate(["--hf-dir", str(hf_dir), "--prompt-ids", ",".join(map(str, PROMPTS[0])),
                         "--max-new-tokens", "12", "--greedy", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = hf_greedy(hf_dir, PROMPTS[:1], 12)[0]
    assert result["tokens"] == expected[: expected.index(50256) + 1] if 50256 in expected else expected
    from data_pipeline.tokenizers import load_tokenizer
    assert result["text"] == load_tokenizer("gpt2").decode(result["tokens"])
    # sampled text from a prompt: the same seed gives the same output
    args = ["--hf-dir", str(hf_dir), "--prompt", "Once upon a time", "--max-new-tokens", "8", "--seed", "3"]
    assert gpt_generate(args + ["--output", str(tmp_path / "a.json")]) == 0
    assert gpt_generate(args + ["--output", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


@pytest.fixture(scope="module")
def tp2_pp2_checkpoint(hf_dir, tmp_path_factory):
    """The random GPT-2 converted into one of our checkpoints at TP2 x PP2 (gpt-generate consolidates it)."""
    from tools.convert import from_hf

    return from_hf(str(hf_dir), str(tmp_path_factory.mktemp("tp2pp2")), tp=2, pp=2).parent


def generate_cli(args: list[str], output) -> dict:
    assert gpt_generate([*args, "--output", str(output)]) == 0
    return json.loads(output.read_text())


def test_command_line_from_a_checkpoint_with_stop_strings(hf_dir, tp2_pp2_checkpoint, tmp_path):
    """`gpt-generate --checkpoint` (a TP2 x PP2 checkpoint): greedy equals transformers; a seeded sample equals the
    library's; with `--stop WORD` (a word from the middle of that sample) generation ends at the first step whose
    text contains it, `tokens` keep that step and `text` is cut before the word (an absent stop changes nothing)."""
    from data_pipeline.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("gpt2")
    prompt = "Once upon a time"
    base = ["--checkpoint", str(tp2_pp2_checkpoint), "--prompt", prompt, "--max-new-tokens", "24"]
    greedy = generate_cli([*base, "--greedy"], tmp_path / "greedy.json")
    assert greedy["tokens"] == hf_greedy(hf_dir, [tokenizer.encode(prompt)], 24)[0]
    sampling = ["--seed", "4", "--temperature", "0.8", "--top-k", "200"]
    free = generate_cli([*base, *sampling], tmp_path / "free.json")["tokens"]
    library = generate(load_model(checkpoint=str(tp2_pp2_checkpoint)), [tokenizer.encode(prompt)], 24,
                       Sampling(seed=4, temperature=0.8, top_k=200), eod_id=50256)[0]
    assert free == library and len(free) == 24
    words = [tokenizer.decode([t]).strip() for t in free]
    stop = next(w for i, w in enumerate(words[8:], 8) if w.isalpha() and w not in tokenizer.decode(free[:i]))
    steps = next(n for n in range(1, 25) if stop in tokenizer.decode(free[:n]))
    stopped = generate_cli([*base, *sampling, "--stop", "no such text", "--stop", stop], tmp_path / "stopped.json")
    assert 8 < steps < 24 and stopped["tokens"] == free[:steps]
    text = tokenizer.decode(free[:steps])
    assert stopped["text"] == text[: text.index(stop)] and stop not in stopped["text"] and stopped["text"]


def test_command_line_samples_top_k_40_by_default(tp2_pp2_checkpoint, tmp_path):
    """Without sampling flags the CLI draws what Sampling(top_k=40, temperature=1, seed=0) draws, not the full
    softmax's draw (a random model is nearly uniform over 50257 tokens, so the two differ)."""
    model = load_model(checkpoint=str(tp2_pp2_checkpoint))
    tokens = generate_cli(["--checkpoint", str(tp2_pp2_checkpoint), "--prompt-ids", ",".join(map(str, PROMPTS[1])),
                           "--max-new-tokens", "16"], tmp_path / "out.json")["tokens"]
    assert tokens == generate(model, [PROMPTS[1]], 16, Sampling(top_k=40, temperature=1.0, seed=0), eod_id=50256)[0]
    assert tokens != generate(model, [PROMPTS[1]], 16, Sampling(top_k=0, seed=0), eod_id=50256)[0]
