"""Beam search parity with `transformers`' `generate(num_beams=...)` on a converted, randomly initialised GPT-2."""
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tools.generate import main as gpt_generate
from tools.model_source import load_model
from training.generation import Beams, beam_search

PROMPTS = [[3, 5, 7, 1, 2], [9, 4], [11, 12, 13]]
SETTINGS = [(0.6, False), (0.6, True), (2.0, "never"), (-1.0, False), (1.0, False)]  # (length penalty, early stop)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """32 tokens and large initial weights: every end token is met by several beams at different lengths."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=32, initializer_range=0.3)
    directory = tmp_path_factory.mktemp("gpt2-beams")
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    return directory


def hf_beams(model, prompt, new_tokens, eos, length_penalty=0.6, early_stopping=False, width=4):
    """transformers' best beam's new tokens, up to and including its end token."""
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=new_tokens, num_beams=width, length_penalty=length_penalty, do_sample=False,
                         early_stopping=early_stopping, eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
    return out[: out.index(eos) + 1] if eos in out else out


@torch.no_grad()
def test_beam_search_equals_transformers(hf_dir):
    """Token for token, for six end tokens, each length penalty and early-stopping mode, each prompt alone and the
    three as one left-padded batch; the settings change the result."""
    ours, theirs = load_model(hf_dir=str(hf_dir)), GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    results = set()
    for eos in range(6):
        for penalty, early in SETTINGS:
            expected = [hf_beams(theirs, p, 12, eos, penalty, early) for p in PROMPTS]
            assert [beam_search(ours, [p], 12, Beams(4, penalty, early), eod_id=eos)[0] for p in PROMPTS] == expected
            assert beam_search(ours, PROMPTS, 12, Beams(4, penalty, early), eod_id=eos) == expected
            results.update(json.dumps(e) for e in expected)
    assert len(results) > 5
    # without an end token every beam runs to max_new_tokens
    assert beam_search(ours, PROMPTS, 10, Beams(2)) == [hf_beams(theirs, p, 10, None, width=2) for p in PROMPTS]


def test_command_line_beams(hf_dir, tmp_path):
    out = tmp_path / "out.json"
    prompt = PROMPTS[0]
    assert gpt_generate(["--hf-dir", str(hf_dir), "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", "10",
                         "--beams", "3", "--length-penalty", "1.5", "--output", str(out)]) == 0
    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    assert json.loads(out.read_text())["tokens"] == hf_beams(theirs, prompt, 10, None, 1.5, width=3)
    assert gpt_generate(["--hf-dir", str(hf_dir), "--prompt-ids", "1", "--beams", "1"]) == 2
