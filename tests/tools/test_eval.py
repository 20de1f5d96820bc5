"""gpt-eval: GPT-3's few-shot format, log-likelihood scoring against the model's own loss, a tiny trained model."""
import json
import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sacrebleu
import torch

from data_pipeline.cli import main as gpt_data
from data_pipeline.indexed import read_tokens
from data_pipeline.tokenizers import load_tokenizer
from tools.eval_tasks import BUILTIN_TASKS, find_tasks, load_task
from tools.eval_decontamination import decontamination_status, read_decontamination
from tools.eval_metrics import exact_match, f1
from tools.evaluate import evaluate_task, main as gpt_eval, perplexity, score
from training.config import ModelConfig
from training.generation import Beams, beam_search
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
    with pytest.raises(Exception, match="choices must be a non-empty list of non-empty strings"):
        load_task(write_task(tmp_path, "blank", [{"context": "a", "choices": ["x", ""], "label": 0}]))
    with pytest.raises(Exception, match="target must be a string or a non-empty list of strings"):
        load_task(write_task(tmp_path, "none", [{"context": "a", "target": []}]))
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


def test_decontamination_report_and_clean_and_dirty_scores(recalling, tmp_path, capsys, monkeypatch):
    """gpt-data decontaminate over training text that contains two last_word passages; gpt-eval reports what was
    found and scores each task on all, clean and dirty examples, which equal scoring those examples alone."""
    from tools.model_source import save_trunk

    tasks = tmp_path / "tasks"
    shutil.copytree(BUILTIN_TASKS, tasks)
    last_word = load_task(tasks / "last_word.jsonl")
    filler = " ".join(f"filler{i}" for i in range(120))
    train = tmp_path / "train"
    train.mkdir()
    texts = [f"{filler} {last_word.examples[i]['context']} {last_word.examples[i]['target']}. {filler}" for i in (3, 0)]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "source": ["cc"] * 3,
                             "text": texts + ["An unrelated document. " + filler]}), train / "part.parquet")
    assert gpt_data(["decontaminate", "--input", str(train), "--output", str(tmp_path / "clean"),
                     "--benchmarks", str(tasks)]) == 0
    report = read_decontamination(str(tmp_path / "clean"))
    by_name = {t.name: decontamination_status(t, report) for t in find_tasks(tasks)}
    assert by_name["last_word"] == {"checked": True, "contaminated_examples": 2, "documents_touched": 2,
                                    "documents_dropped": 0, "ngram": 13}
    assert by_name["capitals"]["checked"] and by_name["capitals"]["contaminated_examples"] == 0
    other = write_task(tmp_path / "other", "fresh", [{"context": "a b", "target": "c"}])
    assert decontamination_status(load_task(other), report) == {"checked": False}
    # gpt-eval --decontamination: the split, against scoring the clean and the dirty examples as tasks of their own
    save_trunk(recalling, tmp_path / "ckpt")
    monkeypatch.setenv("COLUMNS", "250")
    assert gpt_eval(["--checkpoint", str(tmp_path / "ckpt"), "--tasks", str(tasks), "--shots", "0",
                     "--decontamination", str(tmp_path / "clean"), "--output", str(tmp_path / "results.json")]) == 0
    rows = {r["task"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    split = rows["last_word"]["decontamination"]
    tokenizer = load_tokenizer("gpt2")
    for part, indices in (("dirty", [0, 3]), ("clean", [i for i in range(14) if i not in (0, 3)])):
        alone = load_task(write_task(tmp_path / part, "last_word", [last_word.examples[i] for i in indices]))
        expected = evaluate_task(recalling, tokenizer, alone, shots=0, seed=0)
        assert split[part] == pytest.approx({"examples": len(indices), "acc": expected["acc"],
                                             "target_ppl": expected["target_ppl"]}, rel=1e-6)
    assert split["all"] == pytest.approx({"examples": 14, "acc": rows["last_word"]["acc"],
                                          "target_ppl": rows["last_word"]["target_ppl"]})
    assert split["clean_minus_all"] == pytest.approx({m: split["clean"][m] - split["all"][m] for m in ("acc", "target_ppl")})
    assert split["dirty"]["acc"] > split["clean"]["acc"]  # example 0 was trained on and is recalled; 3 was not
    capitals = rows["capitals"]["decontamination"]
    assert capitals["dirty"] == {"examples": 0} and capitals["clean"]["examples"] == 16
    assert capitals["clean_minus_all"] == {"acc": 0.0, "acc_norm": 0.0, "acc_norm_chars": 0.0}
    table = capsys.readouterr().err
    assert f"checked (13-grams): 2 found, clean-all acc {split['clean_minus_all']['acc']:+.3f}" in table
    # a report without example ids (an older gpt-data decontaminate): the split is unavailable
    del report["last_word"]["contaminated_example_ids"]
    status = decontamination_status(last_word, report, lambda indices: {})
    assert status["split"].startswith("unavailable: the report lists no contaminated_example_ids")


def test_command_line_errors_are_one_line(capsys, tmp_path):
    assert gpt_eval(["--checkpoint", str(tmp_path), "--shots", "one"]) == 2
    assert capsys.readouterr().err.strip() == "gpt-eval: error: --shots must be comma-separated integers, got 'one'"
    assert gpt_eval(["--checkpoint", str(tmp_path / "missing"), "--tasks", "nope"]) == 2
    assert "no task file or built-in task named 'nope'" in capsys.readouterr().err
    assert gpt_eval(["--checkpoint", str(tmp_path), "--beams", "1"]) == 2
    assert capsys.readouterr().err.strip() == "gpt-eval: error: --beams must be at least 2 (or 0: greedy decoding)"


# --------------------------------------------------------------------------- scoring, checked independently

@torch.no_grad()
def continuation_log_likelihood(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one full forward pass of the model (softmax over the real vocabulary)."""
    whole = torch.tensor([context + continuation])
    logprobs = model(whole[:, :-1])[0, -len(continuation):, :VOCAB].log_softmax(-1)
    return float(logprobs.gather(-1, whole[0, -len(continuation):, None]).sum())


@torch.no_grad()
def greedy_tokens(model, context: list[int], count: int) -> list[int]:
    """`count` tokens decoded greedily, re-running the whole sequence at every step (no cache)."""
    tokens = list(context)
    for _ in range(count):
        tokens.append(int(model(torch.tensor([tokens]))[0, -1, :VOCAB].argmax()))
    return tokens[len(context):]


def test_multiple_choice_acc_sums_and_acc_norm_averages_per_token(trained, tmp_path):
    """Each option's log-likelihood, summed (acc) and per token (acc_norm), computed by hand; options of very
    different lengths make the two metrics pick differently, and gpt-eval must follow both."""
    tokenizer = load_tokenizer("gpt2")
    examples = [{"context": context, "choices": choices, "label": 0} for context, choices in [
        ("The history of the", ["zebra", "city of the United States of America"]),
        ("In the year", ["the", "of the first World War and the"]),
        ("The population of", ["Paris", "the town was 1,000 at the 2010 census"]),
        ("He was born in", ["Kyoto", "the city of New York in the United States"]),
    ]]
    picks = []
    for example in examples:
        context = tokenizer.encode(example["context"])
        options = [tokenizer.encode(" " + choice) for choice in example["choices"]]
        scores = [continuation_log_likelihood(trained, context, option) for option in options]
        picks.append((max(range(2), key=lambda i: scores[i]), max(range(2), key=lambda i: scores[i] / len(options[i]))))
        example["label"] = picks[-1][1]
    disagree = sum(by_sum != by_token for by_sum, by_token in picks)
    assert disagree >= 1, picks  # the test needs options where length normalisation changes the answer
    task = load_task(write_task(tmp_path, "lengths", examples))
    result = evaluate_task(trained, tokenizer, task, shots=0, seed=0, batch_size=3)
    assert result["acc_norm"] == 1.0 and result["acc"] == pytest.approx(1 - disagree / len(examples))
    # with in-context examples (GPT-3's prompt), again against the hand computation
    result = evaluate_task(trained, tokenizer, task, shots=1, seed=5, batch_size=3)
    hits = [0, 0]
    for index, example in enumerate(examples):
        context = tokenizer.encode(task.prompt(index, 1, seed=5))
        options = [tokenizer.encode(" " + choice) for choice in example["choices"]]
        scores = [continuation_log_likelihood(trained, context, option) for option in options]
        hits[0] += max(range(2), key=lambda i: scores[i]) == example["label"]
        hits[1] += max(range(2), key=lambda i: scores[i] / len(options[i])) == example["label"]
    assert (result["acc"], result["acc_norm"]) == (hits[0] / len(examples), hits[1] / len(examples))


def memorising(passages: list[dict], steps: int = 20) -> GPT:
    """A tiny GPT trained on `context + " " + target` of these passages until it recalls some targets."""
    tokenizer = load_tokenizer("gpt2")
    sequences = [tokenizer.encode(p["context"]) + tokenizer.encode(" " + p["target"]) for p in passages]
    width = max(len(s) for s in sequences)
    tokens = torch.tensor([s + [0] * (width - len(s)) for s in sequences])
    real = torch.tensor([[1.0] * (len(s) - 1) + [0.0] * (width - len(s)) for s in sequences])
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(tokens[:, :-1])[..., :VOCAB]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        loss = (losses * real).sum() / real.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def recalling() -> GPT:
    """A tiny GPT trained on every other shipped last_word passage (so it recalls some targets)."""
    return memorising(load_task(BUILTIN_TASKS / "last_word.jsonl").examples[::2])


def test_completion_accuracy_is_greedy_decoding_of_the_target(recalling):
    """LAMBADA-style on the shipped passages, with a model trained on every other one (so it recalls some
    targets): acc and target_ppl equal a hand count with an independent no-cache greedy loop."""
    tokenizer = load_tokenizer("gpt2")
    task = load_task(BUILTIN_TASKS / "last_word.jsonl")
    model = recalling
    correct, logprob, count = 0, 0.0, 0
    for example in task.examples:
        context, target = tokenizer.encode(example["context"]), tokenizer.encode(" " + example["target"])
        correct += greedy_tokens(model, context, len(target)) == target
        logprob += continuation_log_likelihood(model, context, target)
        count += len(target)
    assert 0 < correct < len(task.examples), correct  # both outcomes occur
    result = evaluate_task(model, tokenizer, task, shots=0, seed=0, batch_size=4)
    assert result["acc"] == correct / len(task.examples)
    assert result["target_ppl"] == pytest.approx(math.exp(-logprob / count), rel=1e-5)
    # with beams: beam search (equal to transformers', tests/tools/test_generate_beams.py) of the target's length
    found = [beam_search(model, [tokenizer.encode(e["context"])], len(target), Beams(4, 0.6), eod_id=tokenizer.eod_id)
             [0] == target for e in task.examples for target in [tokenizer.encode(" " + e["target"])]]
    assert 0 < sum(found) < len(found)
    beams = evaluate_task(model, tokenizer, task, shots=0, seed=0, batch_size=4, beams=Beams(4, 0.6))
    assert beams["acc"] == sum(found) / len(found) and beams["target_ppl"] == result["target_ppl"]


def test_gpt_eval_runs_the_shipped_tasks_end_to_end(trained, tmp_path, capsys, monkeypatch):
    """`gpt-eval --checkpoint` on configs/eval: the table (stderr) and the JSON file agree with each other and
    with scoring the same model in process."""
    from tools.model_source import save_trunk

    save_trunk(trained, tmp_path / "ckpt")
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    capsys.readouterr()
    assert gpt_eval(["--checkpoint", str(tmp_path / "ckpt"), "--shots", "0,2", "--seed", "3",
                     "--output", str(tmp_path / "results.json")]) == 0
    table = capsys.readouterr().err
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["seed"] == 3
    tokenizer, tasks = load_tokenizer("gpt2"), find_tasks(None)
    expected = [evaluate_task(trained, tokenizer, task, shots, seed=3) for task in tasks for shots in (0, 2)]
    assert [(r["task"], r["kind"], r["shots"], r["examples"]) for r in report["results"]] == [
        ("capitals", "multiple_choice", 0, 16), ("capitals", "multiple_choice", 2, 16),
        ("last_word", "completion", 0, 14), ("last_word", "completion", 2, 14)]
    assert set(report["metrics"]) == {"acc", "acc_norm", "acc_norm_chars", "target_ppl"}
    assert "per token (GPT-3" in report["metrics"]["acc_norm"] and "harness" in report["metrics"]["acc_norm_chars"]
    for row, reference in zip(report["results"], expected):
        assert row["decontamination"] == {"checked": False}
        metrics = ("acc", "acc_norm", "acc_norm_chars") if row["kind"] == "multiple_choice" else ("acc", "target_ppl")
        assert set(row) == {"task", "kind", "shots", "examples", "decontamination", *metrics}
        for metric in metrics:
            assert row[metric] == pytest.approx(reference[metric], rel=1e-6)
    header = next(line for line in table.splitlines() if "┃" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == [
        "task", "kind", "shots", "examples", "acc", "acc_norm", "acc_norm_chars", "ppl", "decontamination"]
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in table.splitlines() if "│" in line]
    for row in report["results"]:
        mc = row["kind"] == "multiple_choice"
        assert [row["task"], row["kind"], str(row["shots"]), str(row["examples"]), f"{row['acc']:.3f}",
                f"{row['acc_norm']:.3f}" if mc else "", f"{row['acc_norm_chars']:.3f}" if mc else "",
                "" if mc else f"{row['target_ppl']:.2f}", "not checked"] in rows, table


# --------------------------------------------------------------------------- the bundled benchmark-style tasks

BUNDLED = "tests/data/eval"


def test_arc_style_normalisations_equal_direct_log_likelihoods(trained):
    """acc (sum), acc_norm (per token), acc_norm_chars (per character of the choice, the harness's acc_norm) and
    acc_unconditional (minus log p(choice | "Answer:"), GPT-3's for ARC) from log-likelihoods computed directly."""
    tokenizer = load_tokenizer("gpt2")
    task = load_task(f"{BUNDLED}/arc_style.jsonl")
    bare = tokenizer.encode("Answer:")
    picks = {"acc": [], "acc_norm": [], "acc_norm_chars": [], "acc_unconditional": []}
    for example in task.examples:
        context = tokenizer.encode(example["context"])
        options = [tokenizer.encode(" " + choice) for choice in example["choices"]]
        conditional = [continuation_log_likelihood(trained, context, option) for option in options]
        unconditional = [continuation_log_likelihood(trained, bare, option) for option in options]
        for name, values in (("acc", conditional),
                             ("acc_norm", [lp / len(o) for lp, o in zip(conditional, options)]),
                             ("acc_norm_chars", [lp / len(c) for lp, c in zip(conditional, example["choices"])]),
                             ("acc_unconditional", [c - u for c, u in zip(conditional, unconditional)])):
            picks[name].append(max(range(len(values)), key=values.__getitem__))
    # the normalisations must pick differently somewhere, or the comparison below could not tell them apart
    assert picks["acc_norm_chars"] != picks["acc_norm"] and picks["acc_unconditional"] != picks["acc"], picks
    result = evaluate_task(trained, tokenizer, task, shots=0, seed=0, batch_size=5)
    labels = [example["label"] for example in task.examples]
    assert {name: result[name] for name in picks} == {
        name: sum(p == label for p, label in zip(chosen, labels)) / len(labels) for name, chosen in picks.items()}


@pytest.mark.parametrize("name, beams", [("squad_style", None), ("en_fr", Beams(3, 0.6))])
def test_generated_answers_scored_by_squad_em_f1_and_sacrebleu(recalling, name, beams):
    """SQuAD-style QA and translation pairs: gpt-eval's answers are those an independent no-cache greedy loop
    generates (cut at the newline), or beam search's with --beams, scored by exact match/F1 (hand-checked in
    test_eval_metrics.py) and by sacrebleu directly. The gold answers are set from the generated ones (exact,
    with words added, or the last word changed), so that every metric lies strictly between its extremes (the
    model, trained on last_word passages, answers with words, where one trained on Wikipedia emits newlines)."""
    tokenizer = load_tokenizer("gpt2")
    task = load_task(f"{BUNDLED}/{name}.jsonl")
    limit = task.declaration.max_new_tokens
    contexts = [tokenizer.encode(e["context"]) for e in task.examples]
    assert max(len(c) for c in contexts) + limit <= recalling.cfg.seq_length  # no truncation to mirror
    if beams is None:
        new_tokens = [greedy_tokens(recalling, context, limit) for context in contexts]
    else:
        new_tokens = [beam_search(recalling, [context], limit, beams, eod_id=tokenizer.eod_id)[0] for context in contexts]
    generated = [tokenizer.decode(tokens).split("\n")[0].strip() for tokens in new_tokens]
    references = [[g] if i % 3 == 0 else [g + " and more words"] if i % 3 == 1 else [g.rsplit(" ", 1)[0] + " x"]
                  for i, g in enumerate(generated)]
    gold = replace(task, examples=[dict(e, target=refs) for e, refs in zip(task.examples, references)])
    result = evaluate_task(recalling, tokenizer, gold, shots=0, seed=0, batch_size=3, beams=beams)
    if name == "en_fr":
        expected = sacrebleu.corpus_bleu(generated, [[refs[0] for refs in references]]).score
        assert 0 < result["bleu"] < 100 and result["bleu"] == pytest.approx(expected)
    else:
        em = [exact_match(g, refs) for g, refs in zip(generated, references)]
        scores = [f1(g, refs) for g, refs in zip(generated, references)]
        assert 0 < sum(em) < len(em) and any(0 < s < 1 for s in scores), generated
        assert (result["exact_match"], result["f1"]) == pytest.approx((sum(em) / len(em), sum(scores) / len(em)))
