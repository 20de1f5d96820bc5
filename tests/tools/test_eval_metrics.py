"""gpt-eval's text metrics against hand-computed SQuAD values and sacrebleu; task declarations."""
import json

import pytest
import sacrebleu

from tools.eval_metrics import bleu, exact_match, f1, normalize_answer
from tools.eval_tasks import find_tasks, load_task

BUNDLED = "tests/data/eval"


def test_squad_normalisation_exact_match_and_f1_by_hand():
    # SQuAD v1.1: lower case, punctuation and a/an/the removed, whitespace collapsed
    assert normalize_answer("  The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("An apple, a pear; the end.") == "apple pear end"
    assert normalize_answer("theatre Anthem") == "theatre anthem"  # articles only as whole words
    assert exact_match("the Denver Broncos.", ["Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    # "broncos of denver" vs "denver broncos": 2 common words, precision 2/3, recall 1 -> F1 0.8
    assert f1("Broncos of Denver", ["the Denver Broncos"]) == pytest.approx(0.8)
    # "at six pm" vs "six": precision 1/3, recall 1 -> 0.5; vs "at six": precision 2/3, recall 1 -> 0.8; best wins
    assert f1("at six pm", ["six"]) == pytest.approx(0.5)
    assert f1("at six pm", ["six", "at six"]) == pytest.approx(0.8)
    # repeated words count once per occurrence: "red red red" vs "red wine": 1 common, P 1/3, R 1/2 -> 0.4
    assert f1("red red red", ["red wine"]) == pytest.approx(0.4)
    assert f1("a the", ["granite"]) == 0.0 and f1("", ["granite"]) == 0.0


def test_bleu_is_sacrebleus_corpus_bleu():
    predictions = ["Le chat dort.", "J'aime les pommes.", "La maison est très grande."]
    first = ["Le chat dort.", "J'aime les pommes vertes.", "La maison est grande."]
    second = ["Le chat est endormi.", "Les pommes me plaisent.", "La maison est très grande."]
    assert bleu(predictions, [[r] for r in first]) == pytest.approx(sacrebleu.corpus_bleu(predictions, [first]).score)
    both = bleu(predictions, [list(pair) for pair in zip(first, second)])
    assert both == pytest.approx(sacrebleu.corpus_bleu(predictions, [first, second]).score)
    assert 0 < bleu(predictions, [[r] for r in first]) < both < 100
    # examples with fewer references: sacrebleu's missing-reference marker (None) in the later streams
    uneven = bleu(predictions, [[first[0]], [first[1], second[1]], [first[2]]])
    assert uneven == pytest.approx(sacrebleu.corpus_bleu(predictions, [first, [None, second[1], None]]).score)


def test_bundled_benchmark_style_tasks_declare_their_metrics():
    tasks = {task.name: task for task in find_tasks(BUNDLED)}
    assert {name: (task.kind, task.metrics) for name, task in tasks.items()} == {
        "arc_style": ("multiple_choice", ("acc", "acc_norm", "acc_norm_chars", "acc_unconditional")),
        "en_fr": ("completion", ("bleu", "target_ppl")),
        "squad_style": ("completion", ("exact_match", "f1")),
    }
    assert tasks["arc_style"].declaration.answer_context == "Answer:"
    squad = tasks["squad_style"]
    assert squad.references(squad.examples[0]) == ["grey granite", "granite"]
    shot_answer = squad.prompt(0, 1, seed=0).split("\n\n")[2]  # Background, Q, A: a shot shows its first answer
    assert shot_answer in {"A: " + squad.references(e)[0] for e in squad.examples[1:]}


@pytest.mark.parametrize("declaration, message", [
    ({"metrics": ["bleu"]}, "metrics must be some of acc, acc_norm, acc_norm_chars, acc_unconditional"),
    ({"metrics": []}, "metrics must be some of"),
    ({"metric": ["acc"]}, "unknown config key 'metric'"),
    ({"metrics": ["acc"], "max_new_tokens": 0}, "max_new_tokens must be at least 1"),
])
def test_bad_declarations_are_one_line_errors(tmp_path, declaration, message):
    (tmp_path / "quiz.jsonl").write_text(json.dumps({"context": "Q", "choices": ["a", "b"], "label": 0}) + "\n")
    (tmp_path / "quiz.task.json").write_text(json.dumps(declaration))
    with pytest.raises(Exception, match=message) as error:
        load_task(tmp_path / "quiz.jsonl")
    assert "\n" not in str(error.value) and str(tmp_path / "quiz.task.json") in str(error.value)
