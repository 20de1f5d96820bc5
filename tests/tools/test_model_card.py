"""gpt-convert to-hf of a trained run: tokenizer files that transformers' own pipeline uses offline, and a model
card from what the run recorded (and "unknown" for what it did not)."""
import json
import shutil

import pytest
from transformers import AutoTokenizer, GPT2LMHeadModel, pipeline

from data_pipeline.tokenizer_train import train_tokenizer
from data_pipeline.tokenizers import load_tokenizer
from tests.tools.test_convert import random_gpt2
from tests.training.launch import REPO, read_metrics, run_pretrain
from tools.convert import from_hf
from tools.convert import main as gpt_convert
from tools.evaluate import main as gpt_eval
from training.consolidated import load_gpt
from training.generation import Sampling, generate

BLEND = REPO / "tests" / "data" / "tokens" / "blend2.json"
TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 steps of the tiny GPT-3 without sparse layers (GPT-2 can express it) on the two-source blend."""
    run_dir = tmp_path_factory.mktemp("run")
    run_pretrain(run_dir, overrides=["train.steps=4", "logging.eval_interval=2", "model.sparse_every=0",
                                     f"data.blend={BLEND}"])
    return run_dir


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    results = tmp_path_factory.mktemp("eval") / "results.json"
    assert gpt_eval(["--checkpoint", str(trained / "checkpoints"), "--tasks", "capitals", "--shots", "0",
                     "--output", str(results)]) == 0
    hf = tmp_path_factory.mktemp("export") / "hf"
    assert gpt_convert(["to-hf", "--input", str(trained / "checkpoints"), "--output", str(hf),
                        "--eval-results", str(results)]) == 0
    return hf, json.loads(results.read_text())["results"]


def test_transformers_pipeline_generates_what_we_generate(trained, exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, _ = exported
    ours = load_tokenizer("gpt2")
    theirs = AutoTokenizer.from_pretrained(hf)
    assert theirs(TEXT)["input_ids"] == ours.encode(TEXT)
    assert theirs.decode(ours.encode(TEXT)) == TEXT and theirs.eos_token_id == ours.eod_id
    generator = pipeline("text-generation", model=str(hf), device="cpu")
    text = generator("Once upon a time", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    model, _ = load_gpt(trained / "checkpoints")
    prompt = ours.encode("Once upon a time")
    new = generate(model, [prompt], 12, Sampling(greedy=True), eod_id=ours.eod_id)[0]
    assert text == ours.decode(prompt + new) and len(new) == 12


def test_model_card_holds_what_the_run_recorded(trained, exported):
    hf, results = exported
    card = (hf / "README.md").read_text()
    parameters = sum(p.numel() for p in GPT2LMHeadModel.from_pretrained(hf).parameters())
    _, valid = read_metrics(trained)
    for line in ["| architecture | gpt3 |", "| layers | 4 |", "| d_model | 64 |", "| heads | 4 |",
                 "| context | 64 |", f"| parameters | {parameters:,} |", "| tokenizer | gpt2 |",
                 "Tokens trained: 2,048 (4 steps at up to 8 x 64 tokens)",  # 4 steps x 8 sequences x 64 tokens
                 "| ccnet | 0.7 | 21,814 | unknown |", "| wiki | 0.3 | 20,676 | unknown |",
                 f"Final validation loss: {valid[-1]['valid_loss']:.4f} (perplexity {valid[-1]['valid_ppl']:.2f}) "
                 "at step 4",
                 f"| capitals | multiple_choice | 0 | 16 | {results[0]['acc']:.3f} | "
                 f"{results[0]['acc_norm']:.3f} |  |"]:
        assert line in card.splitlines(), line
    assert "transformers' `GPT2LMHeadModel`" in card and [r["step"] for r in valid] == [2, 4]


def test_what_a_converted_checkpoint_does_not_record_is_unknown(tmp_path, capsys):
    """A from-hf checkpoint has no run, blend, trainer state or tokenizer: the card says so and no tokenizer files
    are written; a tokenizer larger than the model is refused."""
    random_gpt2(tmp_path / "hf", 1001, 48, 2, 4)
    from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), 1, 1)
    assert gpt_convert(["to-hf", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "back")]) == 0
    assert "without tokenizer files" in capsys.readouterr().out
    card = (tmp_path / "back" / "README.md").read_text().splitlines()
    for line in ["| tokenizer | unknown |", "Tokens trained: unknown", "Data blend: unknown",
                 "Final validation loss: unknown"]:
        assert line in card, line
    assert not (tmp_path / "back" / "tokenizer.json").exists() and not any("Evaluation" in line for line in card)
    assert gpt_convert(["to-hf", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "x"),
                        "--tokenizer", "gpt2"]) == 2
    assert capsys.readouterr().err.strip() == ("gpt-convert: error: to-hf: the tokenizer gpt2 has 50257 tokens, "
                                               "the model 1001")
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "back").config.vocab_size == 1001


def test_a_tokenizer_without_hugging_face_files_stops_the_export_before_writing(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "tests" / "data" / "ccnet-head-0091.jsonl.gz", tmp_path / "docs" / "ccnet.jsonl.gz")
    sentencepiece = train_tokenizer(tmp_path / "docs", tmp_path / "sp", vocab_size=600)
    random_gpt2(tmp_path / "hf", 1001, 48, 2, 4)
    from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), 1, 1)
    capsys.readouterr()
    assert gpt_convert(["to-hf", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "out"),
                        "--tokenizer", f"sentencepiece:{sentencepiece.path}"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "(--tokenizer none exports the model without tokenizer files)") and not (tmp_path / "out").exists()
