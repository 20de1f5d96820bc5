"""gpt-finetune: GPT-1's input transformations, and a real task where the loss falls and accuracy beats chance."""
import json
import math

import torch

from data_pipeline.tokenizers import load_tokenizer
from tests.tools.real_text_task import news_or_wiki
from tools.evaluate import main as gpt_eval
from tools.finetune import FinetuneInfo, load_head, main as gpt_finetune, sequences
from tools.model_source import load_model, save_trunk
from training.config import ModelConfig
from training.model import GPT


def test_input_transformations_follow_gpt1():
    tokenizer = load_tokenizer("gpt2")
    enc = tokenizer.encode
    s, d, e = 50257, 50258, 50259

    def info(kind):
        return FinetuneInfo("t", kind, 2, s, d, e, max_length=64)

    assert sequences(info("classification"), tokenizer, {"text": "A fine day.", "label": 1}) == [[s, *enc("A fine day."), e]]
    assert sequences(info("entailment"), tokenizer, {"premise": "It rains.", "hypothesis": "It is wet.", "label": 0}) \
        == [[s, *enc("It rains."), d, *enc("It is wet."), e]]
    assert sequences(info("similarity"), tokenizer, {"text_a": "One cat.", "text_b": "A cat.", "label": 1}) \
        == [[s, *enc("One cat."), d, *enc("A cat."), e], [s, *enc("A cat."), d, *enc("One cat."), e]]
    assert sequences(info("multiple_choice"), tokenizer, {"context": "2+2=", "choices": ["4", "5"], "label": 0}) \
        == [[s, *enc("2+2="), d, *enc("4"), e], [s, *enc("2+2="), d, *enc("5"), e]]
    long = sequences(FinetuneInfo("t", "entailment", 2, s, d, e, max_length=12), tokenizer,
                     {"premise": "word " * 30, "hypothesis": "other " * 30, "label": 0})[0]
    assert len(long) == 12 and long[0] == s and long[-1] == e and d in long


def test_finetuning_learns_a_real_task_and_gpt_eval_scores_it(tmp_path, capsys):
    """Sentences from real news articles vs real Wikipedia articles, from a randomly initialised tiny GPT."""
    task = news_or_wiki(tmp_path / "task", train=256, test=96)
    cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=64, n_heads=4, seq_length=64, vocab_size=50257, dropout=0.1)
    save_trunk(GPT(cfg, seed=1), tmp_path / "base")
    out = tmp_path / "tuned"
    assert gpt_finetune(["--checkpoint", str(tmp_path / "base"), "--task", str(task), "--output", str(out),
                         "--epochs", "3", "--batch-size", "16", "--lr", "1e-3", "--warmup", "0.1"]) == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 48
    first, last = history[:4], history[-4:]
    assert sum(h["loss"] for h in last) < sum(h["loss"] for h in first) - 4 * 0.3
    summary = json.loads((out / "summary.json").read_text())
    # 96 balanced test examples: chance is 0.5; P(acc >= 0.625 | chance) < 0.01
    assert summary["test_acc"] >= 0.625, summary
    # the checkpoint loads as a plain model (head alongside) and gpt-eval scores the test split with its head
    model = load_model(checkpoint=str(out))
    head, info = load_head(out, model)
    assert info.kind == "classification" and info.num_labels == 2 and head is not None
    capsys.readouterr()
    assert gpt_eval(["--checkpoint", str(out), "--tasks", str(task), "--output", str(tmp_path / "eval.json")]) == 0
    (result,) = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert result["task"] == "news_or_wiki" and math.isclose(result["acc"], summary["test_acc"])
