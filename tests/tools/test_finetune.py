"""gpt-finetune: GPT-1's input transformations and losses, real tasks where the loss falls and accuracy beats
chance, and a TP2 x PP2 x DP2 run on the trainer's engine that takes the same steps as one process."""
import copy
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data_pipeline.tokenizers import load_tokenizer
from tests.tools.real_text_task import news_or_wiki, same_source, true_ending
from tests.training.launch import REPO, free_port, max_relative_difference, stopped_as_it_starts
from tools.convert import describe, main as gpt_convert, write_layout
from tools.eval_tasks import load_task
from tools.evaluate import main as gpt_eval
from tools.finetune import build_parser, evaluate_finetuned, main as gpt_finetune
from tools.finetune_batches import sequences
from tools.model_source import LoadedModel, load_model, save_trunk
from tools.task_head import HEAD_FILE, HEAD_PREFIX, INFO_KEY, LEGACY_INFO_FILE, FinetuneInfo, load_head
from training.checkpoint_files import read_manifest, write_weights
from training.config import Config, ModelConfig
from training.model import GPT

QUIET = ["--set", "logging.tensorboard=false"]


def read_metrics(output) -> tuple[list[dict], list[dict]]:
    """(step records, evaluation records) of a fine-tuning run's metrics.jsonl."""
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "test_acc" in r]


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
                         "--epochs", "4", "--batch-size", "16", "--lr", "1e-3", "--warmup", "0.1", *QUIET]) == 0
    history, (final,) = read_metrics(out)
    assert len(history) == 64  # 4 epochs: with 3 the task loss had barely left ln 2 (accuracy 0.53-0.60 by seed)
    first, last = history[:4], history[-4:]
    assert sum(h["loss"] for h in last) < sum(h["loss"] for h in first) - 4 * 0.3
    summary = json.loads((out / "summary.json").read_text())
    # 96 balanced test examples: chance is 0.5; P(acc >= 0.625 | chance) < 0.01
    assert summary["test_acc"] >= 0.625 and final["test_acc"] == summary["test_acc"], summary
    # the checkpoint loads as a plain model (head inside) and gpt-eval scores the test split with its head
    model = load_model(checkpoint=str(out))
    head, info = load_head(out, model)
    assert info.kind == "classification" and info.num_labels == 2 and head is not None
    capsys.readouterr()
    assert gpt_eval(["--checkpoint", str(out), "--tasks", str(task), "--output", str(tmp_path / "eval.json")]) == 0
    (result,) = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert result["task"] == "news_or_wiki" and math.isclose(result["acc"], summary["test_acc"])


# --------------------------------------------------------------------------- GPT-1's losses, computed by hand

def tiny_gpt(seed: int = 2, arch: str = "gpt2") -> GPT:
    cfg = ModelConfig(arch=arch, n_layers=2, d_model=32, n_heads=4, seq_length=48, vocab_size=50257, dropout=0.0)
    return GPT(cfg, seed)


@torch.no_grad()
def by_hand(model: GPT, sequence: list[int]) -> tuple[torch.Tensor, float, int]:
    """(final state of the last token, summed next-token NLL, targets) of one unpadded sequence, running the
    model's layers directly (no batching)."""
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
    """One step at lr 0 over the whole train split, in micro-batches of 2: the logged losses equal GPT-1's,
    computed independently from the saved model and head.

    similarity: the head on the sum of the extract states of both orders; multiple choice: one score per
    answer, softmax over the answers; total = task loss + 0.5 x LM loss (the default weight), the LM loss
    the mean over all the batch's targets."""
    task = load_task(make_task(tmp_path, train=8, test=4))
    save_trunk(tiny_gpt(), tmp_path / "base")
    out = tmp_path / "out"
    assert gpt_finetune(["--checkpoint", str(tmp_path / "base"), "--task", str(task.path), "--output", str(out),
                         "--epochs", "1", "--batch-size", "8", "--micro-batch-size", "2", "--lr", "0",
                         "--head-dropout", "0", *QUIET]) == 0
    (step,), _ = read_metrics(out)
    model, tokenizer = load_model(checkpoint=str(out)), load_tokenizer("gpt2")  # lr 0: the weights that step used
    head, info = load_head(out, model)
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
    assert step["task_loss"] == pytest.approx(task_loss, rel=1e-5)
    assert step["lm_loss"] == pytest.approx(lm_loss, rel=1e-5)
    assert step["loss"] == pytest.approx(task_loss + 0.5 * lm_loss, rel=1e-5)
    assert build_parser().parse_args(["--hf-dir", "x", "--task", "t", "--output", "o"]).lm_weight == 0.5
    # gpt-eval's batched, right-padded forward picks what the by-hand states pick
    scored = evaluate_finetuned(LoadedModel(model, tokenizer, head, info), dataclasses.replace(task, examples=task.train))
    assert scored["acc"] == float((logits.argmax(-1) == labels).float().mean())


@pytest.mark.parametrize("make_task", [same_source, true_ending], ids=["similarity", "multiple_choice"])
def test_similarity_and_multiple_choice_train_and_gpt_eval_scores_them(tmp_path, capsys, make_task):
    task = make_task(tmp_path / "task", train=32, test=16)
    save_trunk(tiny_gpt(), tmp_path / "base")
    out = tmp_path / "tuned"
    assert gpt_finetune(["--checkpoint", str(tmp_path / "base"), "--task", str(task), "--output", str(out),
                         "--epochs", "4", "--batch-size", "8", "--lr", "2e-3", "--warmup", "0.1", *QUIET]) == 0
    history, _ = read_metrics(out)
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
    save_trunk(tiny_gpt(), tmp_path / "base")
    common = ["--checkpoint", str(tmp_path / "base"), "--task", str(task), "--output", str(tmp_path / "out")]
    for flags, message in ((["--tp", "0"], "--tp must be at least 1"),
                           (["--tp", "2"], "TP 2 x PP 1 does not divide the 1 processes"),
                           (["--pp", "3"], "model.n_layers=2 is not divisible by parallel.pp=3"),
                           (["--set", "parallel.zero_stage=5"], "parallel.zero_stage must be 0, 1, 2 or 3, got 5"),
                           (["--head-dropout", "1"], "--head-dropout must be in [0, 1)")):
        assert gpt_finetune([*common, *flags]) == 2
        assert capsys.readouterr().err.strip() == f"gpt-finetune: error: {message}"


# --------------------------------------------------------------------------- TP x PP x DP on the engine

PARALLEL_RUN = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--warmup", "0.1", "--head-dropout", "0", *QUIET]


@pytest.fixture(scope="module")
def parallel_reference(tmp_path_factory):
    """A GPT-1 base model saved at TP2 x PP2, a real classification task, and a one-process fine-tuning run
    from them (fp32, dropout 0, 4 steps, one micro-batch per step)."""
    root = tmp_path_factory.mktemp("parallel")
    task = news_or_wiki(root / "task", train=16, test=12)
    model = tiny_gpt(seed=1, arch="gpt1")
    write_layout({n: p.detach() for n, p in model.named_parameters()}, Config(model=copy.deepcopy(model.cfg)),
                 str(root / "base"), 2, 2, model.cfg.padded_vocab_size(1))
    args = ["--checkpoint", str(root / "base"), "--task", str(task), *PARALLEL_RUN]
    assert gpt_finetune([*args, "--output", str(root / "one")]) == 0
    return root, args, task


def finetune_in_processes(nproc: int, args: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), "-m", "tools.finetune", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    result = subprocess.run(command, cwd=REPO, env=dict(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]


def checkpoint_weights(directory) -> dict[str, torch.Tensor]:
    model = load_model(checkpoint=str(directory))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.multiproc
def test_tp2_pp2_dp2_takes_the_same_steps_as_one_process_and_gpt_eval_loads_it(parallel_reference, tmp_path, capsys):
    """8 processes (the head on the last of 2 pipeline stages, the trunk's megatron-core layers split in 2, 2
    data-parallel ranks of 2 micro-batches each) from the TP2 x PP2 checkpoint: per-step losses equal one
    process's within 1e-5, and so do the saved weights and head; gpt-eval scores the checkpoint."""
    root, args, task = parallel_reference
    out = root / "tp2_pp2_dp2"
    finetune_in_processes(8, [*args, "--tp", "2", "--pp", "2", "--micro-batch-size", "2", "--output", str(out)])
    (ours, _), (reference, _) = read_metrics(out), read_metrics(root / "one")
    assert [r["step"] for r in ours] == [1, 2, 3, 4]
    for key in ("loss", "task_loss", "lm_loss"):
        assert max_relative_difference([r[key] for r in reference], [r[key] for r in ours]) < 1e-5, key
    manifests = [read_manifest(d) for d in (out, root / "one")]
    assert manifests[0]["layout"]["tp"] == manifests[0]["layout"]["pp"] == manifests[0]["layout"]["dp"] == 2
    assert manifests[0][INFO_KEY] == manifests[1][INFO_KEY] and manifests[0]["trainer"]["step"] == 4
    tuned, expected = checkpoint_weights(out), checkpoint_weights(root / "one")
    assert tuned.keys() == expected.keys()
    base = checkpoint_weights(root / "base")
    for name in expected:
        torch.testing.assert_close(tuned[name], expected[name], rtol=0, atol=1e-5, msg=name)
    # the steps moved the weights by far more than that (Adam: about lr per step)
    assert min(float((expected[n] - base[n]).abs().max()) for n in expected if "blocks" in n) > 1e-3
    heads = [load_head(d, load_model(checkpoint=str(d)))[0].state_dict() for d in (out, root / "one")]
    for name in heads[1]:
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=0, atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] == json.loads((root / "one" / "summary.json").read_text())["test_acc"]
    capsys.readouterr()
    assert gpt_eval(["--checkpoint", str(out), "--tasks", str(task), "--output", str(tmp_path / "eval.json")]) == 0
    (result,) = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert result["shots"] == "fine-tuned" and math.isclose(result["acc"], summary["test_acc"])
    # resharded to TP1 x PP1 and consolidated, the trainer's TP2 x PP2 x DP2 checkpoint keeps its head
    assert gpt_convert(["reshard", "--input", str(out), "--output", str(tmp_path / "tp1"), "--tp", "1", "--pp", "1"]) == 0
    assert gpt_convert(["consolidate", "--input", str(out), "--output", str(tmp_path / "one_file")]) == 0
    assert_same_predictions(out, [tmp_path / "tp1", tmp_path / "one_file"], str(task), tmp_path)


@torch.no_grad()
def head_logits(directory, task: str) -> torch.Tensor:
    """[test examples, classes]: a classification checkpoint's head on each example's extract state, by hand."""
    model = load_model(checkpoint=str(directory))
    head, info = load_head(directory, model)
    tokenizer = load_tokenizer("gpt2")
    return torch.stack([head(by_hand(model, sequences(info, tokenizer, e)[0])[0]) for e in load_task(task).examples])


def eval_accuracy(directory, task: str, output) -> float:
    assert gpt_eval(["--checkpoint", str(directory), "--tasks", task, "--output", str(output)]) == 0
    (result,) = json.loads(output.read_text())["results"]
    assert result["shots"] == "fine-tuned"
    return result["acc"]


def assert_same_predictions(original, converted: list, task: str, tmp_path) -> None:
    """Each converted checkpoint has the original's task record, its head's logits on every test example
    (within 1e-5, so the same predictions) and gpt-eval's accuracy."""
    reference, accuracy = head_logits(original, task), eval_accuracy(original, task, tmp_path / "original.json")
    for directory in converted:
        assert read_manifest(directory)[INFO_KEY] == read_manifest(original)[INFO_KEY]
        logits = head_logits(directory, task)
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5, msg=str(directory))
        assert torch.equal(logits.argmax(-1), reference.argmax(-1))
        assert eval_accuracy(directory, task, tmp_path / "converted.json") == accuracy


def test_reshard_and_consolidate_keep_the_head_and_to_hf_exports_the_trunk(parallel_reference, tmp_path, capsys):
    """gpt-convert reshard (to TP2 x PP2: the head on the last stage's files) and consolidate (back to one file)
    carry the fine-tuned head and task record: the same predictions and gpt-eval accuracy as the trainer's
    checkpoint. Padding that would cut the special tokens' rows is refused in one line; to-hf exports the
    fine-tuned trunk and says that the head stays behind."""
    from transformers import OpenAIGPTLMHeadModel

    root, _, task = parallel_reference
    one, tp2, single = root / "one", tmp_path / "tp2_pp2", tmp_path / "single"
    assert gpt_convert(["reshard", "--input", str(one), "--output", str(tp2), "--tp", "2", "--pp", "2"]) == 0
    assert gpt_convert(["consolidate", "--input", str(tp2), "--output", str(single)]) == 0
    params = read_manifest(tp2)["params"]
    assert [params[HEAD_PREFIX + p]["shards"] for p in ("linear.weight", "linear.bias")] == [["state/pp1-tp0-dp0.pt"]] * 2
    assert_same_predictions(one, [tp2, single], str(task), tmp_path)
    assert "fine-tuned   news_or_wiki (classification), task head included" in describe(str(single))

    capsys.readouterr()
    assert gpt_convert(["consolidate", "--input", str(one), "--output", str(tmp_path / "cut"),
                        "--vocab-multiple", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpt-convert: error: the fine-tuned model's special tokens use rows up to 50259 of the padded vocabulary; "
        "padding to 50257 rows (--vocab-multiple 1 x TP 1) would cut them")
    assert not (tmp_path / "cut").exists()

    assert gpt_convert(["to-hf", "--input", str(one), "--output", str(tmp_path / "hf"), "--tokenizer", "none"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == (  # (then transformers' progress bar)
        f"gpt-convert: note: {read_manifest(one)['path']} is fine-tuned for news_or_wiki (classification): "
        "exporting its trunk only, without the task head and the special-token rows")
    tokens = torch.tensor([load_tokenizer("gpt2").encode(load_task(str(task)).examples[0]["text"])])
    with torch.no_grad():
        exported = OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "hf").eval()(tokens).logits
        trunk = load_model(checkpoint=str(one))(tokens)[..., :50257]
    torch.testing.assert_close(exported, trunk, rtol=0, atol=1e-4)


@pytest.mark.parametrize("record", [{"task": "news_or_wiki"}, ["classification"], "start_id as text"],
                         ids=["missing-keys", "a-list", "wrong-type"])
def test_a_malformed_task_record_is_refused_in_one_line(parallel_reference, tmp_path, capsys, record):
    """A checkpoint whose manifest holds a damaged fine-tuning record: every tool that reads it says so in one
    line (no KeyError), and writes nothing."""
    root, _, task = parallel_reference
    damaged = tmp_path / "damaged"
    shutil.copytree(root / "one", damaged, symlinks=True)
    manifest_path = Path(read_manifest(damaged)["path"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[INFO_KEY] = ({**manifest[INFO_KEY], "start_id": str(manifest[INFO_KEY]["start_id"])}
                          if record == "start_id as text" else record)
    manifest_path.write_text(json.dumps(manifest))
    for tool, args in ((gpt_convert, ["reshard", "--input", str(damaged), "--output", str(tmp_path / "out"), "--tp", "2"]),
                       (gpt_convert, ["to-hf", "--input", str(damaged), "--output", str(tmp_path / "out"),
                                      "--tokenizer", "none"]),
                       (gpt_eval, ["--checkpoint", str(damaged), "--tasks", str(task), "--output",
                                   str(tmp_path / "out.json")])):
        capsys.readouterr()
        assert tool(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the fine-tuned task record in" in err and "is malformed" in err, err
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def test_a_stopped_finetune_resumes_to_the_same_steps(parallel_reference):
    """Stopped after 2 of 4 steps (train.exit_interval), the same command resumes from the checkpoint: the
    last steps' losses are the straight run's."""
    root, args, _ = parallel_reference
    out = root / "resumed"
    assert gpt_finetune([*args, "--output", str(out), "--set", "logging.tensorboard=false", "train.exit_interval=2"]) == 0
    assert [r["step"] for r in read_metrics(out)[0]] == [1, 2]
    assert gpt_finetune([*args, "--output", str(out)]) == 0
    steps, reference = read_metrics(out)[0], read_metrics(root / "one")[0]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["loss"] for r in steps] == [r["loss"] for r in reference]


def test_a_finetune_stopped_during_start_up_exits_zero_before_its_first_step(parallel_reference, tmp_path):
    """USR1 as soon as the rank catches it (before the model is built): exit 0, no step, no checkpoint, and the
    summary says the head was not evaluated (it used to fail reading the metrics of a run that had none)."""
    root, args, _ = parallel_reference
    out = tmp_path / "stopped"
    result = stopped_as_it_starts([sys.executable, "-m", "tools.finetune", *args, "--output", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stop asked for during start-up" in result.stdout
    assert "over 0 steps, test accuracy not evaluated yet" in result.stderr
    assert not list(out.rglob("step*")) and math.isnan(json.loads((out / "summary.json").read_text())["test_acc"])


def test_heads_are_part_of_the_checkpoint_and_older_outputs_still_load(parallel_reference, tmp_path):
    """The head is in the checkpoint's parameters (`loss_fn.head.*`, verified with them) and its task in the
    manifest; outputs of earlier versions (a weights-only checkpoint with head.pt inside it, or head.pt and
    finetune.json next to `latest`) give the same head."""
    root = parallel_reference[0]
    model = load_model(checkpoint=str(root / "one"))
    head, info = load_head(root / "one", model)
    manifest = read_manifest(root / "one")
    assert sorted(n for n in manifest["params"] if n.startswith(HEAD_PREFIX)) == [HEAD_PREFIX + "linear.bias",
                                                                               HEAD_PREFIX + "linear.weight"]
    assert manifest[INFO_KEY]["num_labels"] == 2 == info.num_labels
    weights = {n: p.detach() for n, p in model.named_parameters()}
    previous = write_weights(tmp_path / "previous", weights, dict.fromkeys(weights), manifest["config"],
                             1, 1, dict.fromkeys(weights, 0), manifest["padded_vocab_size"],
                             extra_files={HEAD_FILE: head.state_dict()}, extra={INFO_KEY: dataclasses.asdict(info)})
    shutil.copytree(tmp_path / "previous", tmp_path / "legacy")
    legacy = tmp_path / "legacy"
    (legacy / previous.name / HEAD_FILE).rename(legacy / HEAD_FILE)
    (legacy / LEGACY_INFO_FILE).write_text(json.dumps(dataclasses.asdict(info)))
    stripped = read_manifest(legacy)
    for key in ("path", INFO_KEY):
        stripped.pop(key)
    stripped["files"].pop(HEAD_FILE)
    (legacy / previous.name / "manifest.json").write_text(json.dumps(stripped))
    resharded = [gpt_convert(["reshard", "--input", str(d), "--output", str(tmp_path / f"{d.name}_tp2"), "--tp", "2"])
                 for d in (tmp_path / "previous", legacy)]
    assert resharded == [0, 0]  # ... and reshard writes them in the current format
    for directory in (tmp_path / "previous", legacy, tmp_path / "previous_tp2", tmp_path / "legacy_tp2"):
        old_head, old_info = load_head(directory, model)
        assert old_info == info
        for name, value in head.state_dict().items():
            assert torch.equal(value, old_head.state_dict()[name])
    assert HEAD_FILE not in read_manifest(tmp_path / "legacy_tp2")["files"]


@pytest.mark.parametrize("keys, closeness", [
    (["parallel.zero_stage=3", "parallel.activation_checkpointing=true"], (0.0, 1e-6)),
    (["precision=bf16"], (1e-6, 1e-2)),  # measured: 1.2e-5 from the fp32 run
], ids=["zero3-recompute", "bf16"])
def test_the_run_config_reaches_the_engine(parallel_reference, tmp_path, keys, closeness):
    """ZeRO-3 with recomputation takes the one-process fp32 run's steps; bf16 takes them to bf16's precision,
    not exactly (the manifest records the layout and precision it ran at)."""
    root, args, _ = parallel_reference
    out = tmp_path / "run"
    assert gpt_finetune([*args, "--output", str(out), "--set", "logging.tensorboard=false", *keys]) == 0
    ours, reference = read_metrics(out)[0], read_metrics(root / "one")[0]
    difference = max(max_relative_difference([r[key] for r in reference], [r[key] for r in ours])
                     for key in ("loss", "task_loss", "lm_loss"))
    assert closeness[0] <= difference < closeness[1]
    layout = read_manifest(out)["layout"]
    assert (layout["zero_stage"], layout["precision"]) == ((3, "fp32") if "precision=bf16" not in keys else (1, "bf16"))
