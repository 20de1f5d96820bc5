"""gpt-finetune: GPT-1's input transformations and losses, real tasks where the loss falls and accuracy beats
chance, and data- and tensor-parallel runs that take the same steps as one process."""
import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from data_pipeline.tokenizers import load_tokenizer
from tests.tools.real_text_task import news_or_wiki, same_source, true_ending
from tests.training.launch import REPO, free_port, max_relative_difference
from tools.convert import write_layout
from tools.eval_tasks import load_task
from tools.evaluate import main as gpt_eval
from tools.finetune import FinalStates, batch_forward, build_parser, finetune, full_weights, main as gpt_finetune, save, sequences
from tools.task_head import FinetuneInfo, TaskHead, load_head
from tools.model_source import load_model, save_trunk
from training.config import Config, ModelConfig
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
                         "--epochs", "4", "--batch-size", "16", "--lr", "1e-3", "--warmup", "0.1"]) == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 64  # 4 epochs: with 3 the task loss had barely left ln 2 (accuracy 0.53-0.60 by seed)
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


# --------------------------------------------------------------------------- GPT-1's losses, computed by hand

def tiny_gpt(seed: int = 2) -> GPT:
    cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=32, n_heads=4, seq_length=48, vocab_size=50257, dropout=0.0)
    return GPT(cfg, seed)


@torch.no_grad()
def by_hand(model: GPT, sequence: list[int]) -> tuple[torch.Tensor, float, int]:
    """(final state of the last token, summed next-token NLL, targets) of one unpadded sequence, running the
    model's layers directly (no hook, no batching)."""
    tokens = torch.tensor([sequence])
    hidden = model.position_embedding(model.token_embedding(tokens))
    for block in model.blocks:
        hidden = block(hidden)
    hidden = model.final_norm(hidden)
    vocab = model.cfg.vocab_size
    logits = model.token_embedding.logits(hidden)[0, :-1, :vocab]  # the softmax over the real vocabulary ...
    targets = tokens[0, 1:]
    text = targets < vocab  # ... so the special tokens (padded rows) are no LM targets
    nll = F.cross_entropy(logits[text], targets[text], reduction="sum")
    return hidden[0, -1], float(nll), int(text.sum())


@pytest.mark.parametrize("make_task", [same_source, true_ending], ids=["similarity", "multiple_choice"])
def test_similarity_and_multiple_choice_losses_follow_gpt1(tmp_path, make_task):
    """One step at lr 0 over the whole train split: the logged losses equal GPT-1's, computed independently.

    similarity: the head on the sum of the extract states of both orders; multiple choice: one score per
    answer, softmax over the answers; total = task loss + 0.5 x LM loss (the default weight)."""
    task = load_task(make_task(tmp_path, train=8, test=4))
    model, tokenizer = tiny_gpt(), load_tokenizer("gpt2")
    head, info, history = finetune(model, tokenizer, task, epochs=1, batch_size=8, lr=0.0, head_dropout=0.0)
    assert len(history) == 1  # lr 0: `model` and `head` are still the weights that step used
    model.eval(), head.eval()
    logits, nll, targets = [], 0.0, 0
    for example in task.train:
        states = []
        for sequence in sequences(info, tokenizer, example):
            state, sequence_nll, sequence_targets = by_hand(model, sequence)
            states.append(state)
            nll, targets = nll + sequence_nll, targets + sequence_targets
        with torch.no_grad():
            logits.append(head(states[0] + states[1]) if info.kind == "similarity"
                          else torch.cat([head(state) for state in states]))
    logits = torch.stack(logits)
    labels = torch.tensor([e["label"] for e in task.train])
    task_loss = float(-logits.log_softmax(-1)[torch.arange(len(labels)), labels].mean())
    lm_loss = nll / targets
    assert logits.shape == (8, 2) and info.kind == task.kind
    assert history[0]["task_loss"] == pytest.approx(task_loss, rel=1e-5)
    assert history[0]["lm_loss"] == pytest.approx(lm_loss, rel=1e-5)
    assert history[0]["loss"] == pytest.approx(task_loss + 0.5 * lm_loss, rel=1e-5)
    assert build_parser().parse_args(["--hf-dir", "x", "--task", "t", "--output", "o"]).lm_weight == 0.5
    # the batched, right-padded forward extracts the same states
    with torch.no_grad():
        batched, _, _ = batch_forward(model, FinalStates(model), head, info, tokenizer, task.train)
    torch.testing.assert_close(batched, logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_task", [same_source, true_ending], ids=["similarity", "multiple_choice"])
def test_similarity_and_multiple_choice_train_and_gpt_eval_scores_them(tmp_path, capsys, make_task):
    task = make_task(tmp_path / "task", train=32, test=16)
    save_trunk(tiny_gpt(), tmp_path / "base")
    out = tmp_path / "tuned"
    assert gpt_finetune(["--checkpoint", str(tmp_path / "base"), "--task", str(task), "--output", str(out),
                         "--epochs", "4", "--batch-size", "8", "--lr", "2e-3", "--warmup", "0.1"]) == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 16
    first, last = history[:4], history[-4:]  # the first and the last pass over the same 32 examples
    assert sum(h["loss"] for h in last) < sum(h["loss"] for h in first) - 4 * 0.1
    assert sum(h["task_loss"] for h in last) < sum(h["task_loss"] for h in first) - 4 * 0.03
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert gpt_eval(["--checkpoint", str(out), "--tasks", str(task), "--output", str(tmp_path / "eval.json")]) == 0
    (result,) = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert result["shots"] == "fine-tuned" and result["examples"] == 16
    assert math.isclose(result["acc"], summary["test_acc"])


def test_parallel_flags_are_checked(tmp_path, capsys):
    task = same_source(tmp_path, train=8, test=4)
    common = ["--checkpoint", str(tmp_path / "none"), "--task", str(task), "--output", str(tmp_path / "out")]
    for flags, message in ((["--tp", "0"], "--tp must be at least 1"),
                           (["--tp", "2"], "--tp 2, but this process already runs at TP=1"),
                           (["--head-dropout", "1"], "--head-dropout must be in [0, 1)")):
        assert gpt_finetune([*common, *flags]) == 2
        assert capsys.readouterr().err.strip() == f"gpt-finetune: error: {message}"


def test_heads_are_part_of_the_checkpoint_and_older_outputs_still_load(tmp_path):
    """The head is a file of the checkpoint (listed, verified) and its task in the manifest; an output written
    before, with head.pt and finetune.json next to `latest`, gives the same head."""
    model = tiny_gpt()
    info = FinetuneInfo("t", "classification", 3, 50257, 50258, 50259, max_length=48)
    save(tmp_path / "new", full_weights(model), model, TaskHead(32, 3), info)
    manifest = json.loads((tmp_path / "new" / "step00000000" / "manifest.json").read_text())
    assert "head.pt" in manifest["files"] and manifest["finetune"]["num_labels"] == 3
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    old = tmp_path / "old"
    (old / "step00000000" / "head.pt").rename(old / "head.pt")
    (old / "finetune.json").write_text(json.dumps(manifest.pop("finetune")))
    manifest["files"].pop("head.pt")
    (old / "step00000000" / "manifest.json").write_text(json.dumps(manifest))
    (new_head, new_info), (old_head, old_info) = (load_head(tmp_path / d, model) for d in ("new", "old"))
    assert new_info == old_info == info
    for name, value in new_head.state_dict().items():
        assert torch.equal(value, old_head.state_dict()[name])


# --------------------------------------------------------------------------- data and tensor parallel

PARALLEL_RUN = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--warmup", "0.1", "--head-dropout", "0"]


@pytest.fixture(scope="module")
def parallel_reference(tmp_path_factory):
    """A base model saved at TP2 x PP2, a real task, and a one-process fine-tuning run from them (fp32, dropout 0)."""
    root = tmp_path_factory.mktemp("parallel")
    task = news_or_wiki(root / "task", train=32, test=16)
    model = tiny_gpt(seed=1)
    write_layout({n: p.detach() for n, p in model.named_parameters()}, Config(model=copy.deepcopy(model.cfg)),
                 str(root / "base"), 2, 2, model.cfg.padded_vocab_size(1))
    args = ["--checkpoint", str(root / "base"), "--task", str(task), *PARALLEL_RUN]
    assert gpt_finetune([*args, "--output", str(root / "one")]) == 0
    return root, args


def finetune_in_processes(nproc: int, args: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), "-m", "tools.finetune", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    result = subprocess.run(command, cwd=REPO, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]


def checkpoint_weights(directory) -> dict[str, torch.Tensor]:
    model = load_model(checkpoint=str(directory))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.multiproc
@pytest.mark.parametrize("layout", [[], ["--tp", "2"]], ids=["dp2", "tp2"])
def test_two_processes_take_the_same_steps_as_one(parallel_reference, layout):
    """DP2 (every rank half of each batch) and TP2 (the trunk's megatron-core layers split, the head
    replicated), both from the TP2 x PP2 checkpoint: per-step losses equal one process's within 1e-5."""
    root, args = parallel_reference
    out = root / ("tp2" if layout else "dp2")
    finetune_in_processes(2, [*args, *layout, "--output", str(out)])
    ours, reference = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                       for d in (out, root / "one"))
    assert [r["step"] for r in ours] == list(range(1, 9))
    for key in ("loss", "task_loss", "lm_loss"):
        assert max_relative_difference([r[key] for r in reference], [r[key] for r in ours]) < 1e-5, key
    assert reference[-1]["loss"] < reference[0]["loss"] - 0.05  # the steps move the weights
    # the saved trunk (TP shards gathered) and head are the one-process run's
    tuned, expected = checkpoint_weights(out), checkpoint_weights(root / "one")
    assert tuned.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(tuned[name], expected[name], rtol=0, atol=1e-4, msg=name)
    heads = [torch.load(d / "step00000000" / "head.pt", weights_only=True) for d in (out, root / "one")]
    for name in heads[1]:
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=0, atol=1e-5)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (out, root / "one")]
    assert summaries[0]["test_acc"] == summaries[1]["test_acc"]
