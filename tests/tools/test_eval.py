"""gpt-eval: GPT-3's few-shot format, log-likelihood scoring against the model's own loss, a tiny trained model."""
import json
import math
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.cli import main as gpt_data
from data_pipeline.indexed import read_tokens
from data_pipeline.tokenizers import load_tokenizer
from tools.eval_tasks import BUILTIN_TASKS, find_tasks, load_task
from tools.evaluate import (decontamination_status, evaluate_task, main as gpt_eval, perplexity,
                            read_decontamination, score)
from training.config import ModelConfig
from training.model import GPT, language_model_loss

VOCAB = 50257


def real_vocabulary_nll(logits, targets) -> float:
    """Summed next-token NLL with the softmax over the real vocabulary (padding rows are not tokens)."""
    return torch.nn.functional.cross_entropy(logits[0, :, :VOCAB], targets[0], reduction="sum").item()

WIKI = "tests/data/tokens/wiki_gpt2_text_document"
CCNET = "tests/data/tokens/ccnet_gpt2_text_document"


def write_task(directory, name, examples, train=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    if train is not None:
        (directory / f"{name}.train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in train))
    return directory / f"{name}.jsonl"


def test_few_shot_prompt_follows_the_documented_format(tmp_path):
    train = [{"context": f"Q: {i} plus one?\nA:", "choices": [str(i + 1), str(i + 2)], "label": i % 2}
             for i in range(6)]
    test = [{"context": "Q: 10 plus one?\nA:", "choices": ["11", "12"], "label": 0}]
    task = load_task(write_task(tmp_path, "plus", test, train))
    assert task.prompt(0, 0, seed=1) == "Q: 10 plus one?\nA:"
    prompt = task.prompt(0, 3, seed=1)
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == "Q: 10 plus one?\nA:"
    shown = []
    for block in blocks[:3]:  # "context" + " " + gold answer
        match = re.fullmatch(r"Q: (\d) plus one\?\nA: (\d+)", block)
        i = int(match.group(1))
        assert match.group(2) == train[i]["choices"][train[i]["label"]]
        shown.append(i)
    assert len(set(shown)) == 3
    assert prompt == task.prompt(0, 3, seed=1) and any(task.prompt(0, 3, seed=s) != prompt for s in range(2, 6))
    # without a train split, shots come from the other scored examples, never the example itself
    lambada = load_task(write_task(tmp_path, "words", [{"context": f"word {i}", "target": f"w{i}"} for i in range(5)]))
    for index in range(5):
        assert f"word {index} w{index}" not in lambada.prompt(index, 4, seed=0)
        assert lambada.prompt(index, 4, seed=0).endswith(f"\n\nword {index}")


def test_task_kinds_and_bad_files(tmp_path):
    kinds = {t.name: t.kind for t in find_tasks(None)}
    assert kinds == {"capitals": "multiple_choice", "last_word": "completion"}
    bad = write_task(tmp_path, "bad", [{"context": "a", "choices": ["x", "y"], "label": 2}])
    with pytest.raises(Exception, match="label must be an index below 2"):
        load_task(bad)
    (tmp_path / "broken.jsonl").write_text('{"context": "a", "target": "b"}\nnot json\n')
    with pytest.raises(Exception, match="broken.jsonl:2: not a JSON line"):
        load_task(tmp_path / "broken.jsonl")


def tiny_model(seed=0) -> GPT:
    cfg = ModelConfig(arch="gpt3", n_layers=2, d_model=32, n_heads=4, seq_length=64, vocab_size=50257, dropout=0.0,
                      sparse_every=2, sparse_offset=1, sparse_window=16)
    return GPT(cfg, seed)


@pytest.fixture(scope="module")
def trained():
    """A tiny GPT trained for a few steps on the bundled Wikipedia tokens."""
    torch.manual_seed(0)
    model = tiny_model()
    tokens = torch.from_numpy(read_tokens(WIKI).astype(np.int64))
    windows = tokens[: (len(tokens) // 65) * 65].view(-1, 65)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for step in range(20):
        batch = windows[torch.randint(0, len(windows), (8,), generator=torch.Generator().manual_seed(step))]
        loss = language_model_loss(model(batch[:, :-1]), batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0
    return model.eval()


@torch.no_grad()
def test_log_likelihood_equals_the_models_own_loss(trained):
    tokenizer = load_tokenizer("gpt2")
    context = tokenizer.encode("The capital of France is")
    requests = [(context, tokenizer.encode(" Paris")), (context, tokenizer.encode(" the largest city of Europe")),
                (tokenizer.encode("One"), tokenizer.encode(" two three four"))]
    scores = score(trained, requests, batch_size=3)
    for (ctx, cont), (logprob, greedy) in zip(requests, scores):
        whole = torch.tensor([ctx + cont])
        logits = trained(whole[:, :-1])
        nll = real_vocabulary_nll(logits[:, -len(cont):], whole[:, -len(cont):])
        assert logprob == pytest.approx(-nll, rel=1e-5, abs=1e-4)
        argmax = logits[0, -len(cont):, :VOCAB].argmax(-1).tolist()
        assert greedy == (argmax == cont)
    one_by_one = score(trained, requests, batch_size=1)
    assert [g for _, g in one_by_one] == [g for _, g in scores]
    assert [lp for lp, _ in one_by_one] == pytest.approx([lp for lp, _ in scores], rel=1e-5, abs=1e-4)


@torch.no_grad()
def test_perplexity_matches_the_training_loss_and_training_lowers_it(trained):
    result = perplexity(trained, CCNET, max_tokens=2000)
    tokens = torch.from_numpy(read_tokens(CCNET)[:2000].astype(np.int64))
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, 64):
        window = tokens[start:start + 65][None]
        total += real_vocabulary_nll(trained(window[:, :-1]), window[:, 1:])
        count += window.shape[1] - 1
    assert result["tokens"] == count == 1999
    assert result["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result["ppl"] < perplexity(tiny_model(), CCNET, max_tokens=2000)["ppl"] / 2


def test_scoring_a_trained_model_is_deterministic(trained):
    tokenizer = load_tokenizer("gpt2")
    for task in find_tasks(None):
        runs = [evaluate_task(trained, tokenizer, task, shots, seed=7, batch_size=4) for shots in (0, 2)]
        again = [evaluate_task(trained, tokenizer, task, shots, seed=7, batch_size=4) for shots in (0, 2)]
        assert runs == again
        assert runs[0]["examples"] == len(task.examples) and 0 <= runs[1]["acc"] <= 1


def test_decontamination_report_per_task(tmp_path):
    """gpt-data decontaminate over training text that contains one last_word passage; gpt-eval reports it."""
    tasks = tmp_path / "tasks"
    shutil.copytree(BUILTIN_TASKS, tasks)
    leaked = load_task(tasks / "last_word.jsonl").examples[3]
    filler = " ".join(f"filler{i}" for i in range(120))
    train = tmp_path / "train"
    train.mkdir()
    texts = [f"{filler} {leaked['context']} {leaked['target']}. {filler}", "An unrelated document. " + filler]
    pq.write_table(pa.table({"id": ["a", "b"], "source": ["cc", "cc"], "text": texts}), train / "part.parquet")
    assert gpt_data(["decontaminate", "--input", str(train), "--output", str(tmp_path / "clean"),
                     "--benchmarks", str(tasks)]) == 0
    report = read_decontamination(str(tmp_path / "clean"))
    by_name = {t.name: decontamination_status(t, report) for t in find_tasks(tasks)}
    assert by_name["last_word"] == {"checked": True, "contaminated_examples": 1, "documents_touched": 1,
                                    "documents_dropped": 0}
    assert by_name["capitals"]["checked"] and by_name["capitals"]["contaminated_examples"] == 0
    other = write_task(tmp_path / "other", "fresh", [{"context": "a b", "target": "c"}])
    assert decontamination_status(load_task(other), report) == {"checked": False}


def test_command_line_errors_are_one_line(capsys, tmp_path):
    assert gpt_eval(["--checkpoint", str(tmp_path), "--shots", "one"]) == 2
    assert capsys.readouterr().err.strip() == "gpt-eval: error: --shots must be comma-separated integers, got 'one'"
    assert gpt_eval(["--checkpoint", str(tmp_path / "missing"), "--tasks", "nope"]) == 2
    assert "no task file or built-in task named 'nope'" in capsys.readouterr().err
