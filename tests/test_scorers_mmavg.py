"""The scorers of MMAvg's sets (POPE, TextVQA and the classification sets) and MMAvg itself (mixlora.scoring),
checked against hand-computed values and the official rules (docs/eval_scoring.md).

Every expected number below is worked out by hand in the comment next to it, from the fixture files in
tests/fixtures/scoring/ or from records written inline, or is a published number of the paper's Table 1; none was
produced by running the scorers.
"""

from __future__ import annotations

import json

import pytest

from mixlora.scoring import ScoringError, read_jsonl
from mixlora.scoring import aggregate, classification, pope, textvqa
from scoring_fixtures import FIXTURES, approx


# ---------------------------------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    "prediction, parsed",
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("There is a dog in the image. No cat is visible.", "yes"),  # only the first sentence counts
        ("I do not see one", "no"),
        ("Nope, no bus here.", "no"),  # the comma is deleted, then "no" is a word
        ("NO", "yes"),  # LLaVA's rule only knows "No", "no", "not"
        ("No\nthere is none", "yes"),  # split on single spaces only: "No\nthere" is one piece
    ],
)
def test_pope_parser(prediction, parsed):
    assert pope.parse_pope(prediction) == parsed


def test_pope_fixture_by_hand():
    result = pope.score_pope(read_jsonl(FIXTURES / "pope.jsonl"))
    r, a = result["splits"]["random"], result["splits"]["adversarial"]
    # random: TP (yes/yes), TN (no/"No."), FP (no/first sentence has no "no"), FN (yes/"not") -> all 50.
    assert (r["tp"], r["tn"], r["fp"], r["fn"]) == (1, 1, 1, 1)
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert r[key] == approx(50.0)
    # adversarial: TP 2, TN 1 ("Nope, no bus"), FP 1 ("NO" parses as yes), FN 0.
    assert (a["tp"], a["tn"], a["fp"], a["fn"]) == (2, 1, 1, 0)
    assert a["accuracy"] == approx(75.0)
    assert a["precision"] == approx(200 / 3)
    assert a["recall"] == approx(100.0)
    assert a["f1"] == approx(80.0)  # 2 * (2/3 * 1) / (2/3 + 1) = 0.8
    # yes-ratio from predictions: 3 of 4 predicted yes (the ground truth has 2 of 4).
    assert a["yes_ratio"] == approx(75.0)
    m = result["mean"]
    assert m["accuracy"] == approx(62.5) and m["f1"] == approx(65.0)
    assert m["precision"] == approx((50 + 200 / 3) / 2) and m["recall"] == approx(75.0)
    assert m["yes_ratio"] == approx(62.5)
    assert result["missing_splits"] == ["popular"] and result["partial"] is True


def test_pope_degenerate_and_bad_input():
    # All predicted "no": precision/recall/F1 are 0 by our convention, yes-ratio 0.
    records = [
        {"prediction": "No", "target": "yes", "split": "popular"},
        {"prediction": "no", "target": "no", "split": "popular"},
    ]
    s = pope.score_pope(records)["splits"]["popular"]
    assert (s["accuracy"], s["precision"], s["recall"], s["f1"], s["yes_ratio"]) == (50.0, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ScoringError, match=r"record 1: target 'maybe' is not yes/no"):
        pope.score_pope([{"prediction": "yes", "target": "maybe", "split": "random"}])
    with pytest.raises(ScoringError, match=r"record 1 has no 'split' field"):
        pope.score_pope([{"prediction": "yes", "target": "yes"}])
    assert pope.score_pope([{"prediction": "yes", "target": "Yes "}], split_field=None)["splits"]["all"]["tp"] == 1


# ------------------------------------------------------------------------------------------------- TextVQA


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("The Coca-Cola.", "coca cola"),  # article dropped, "-" -> space, final "." deleted
        ("two dogs", "2 dogs"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("Dog's", "dog 's"),
        ("dont", "don't"),
        ("yes !", "yes"),
        ("A (big) sign", "big sign"),  # "(" and ")" touch spaces, so both are deleted
        ("hello/world", "hello world"),
        ("  Stop\tSign  ", "stop sign"),
        ("I'm", "i'm"),
        ("im", "im"),  # the table's key is "Im": never matches lower-cased text (official quirk)
        ("couldnt've", "couldn't've"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert textvqa.normalize_answer(raw) == normalised


def test_vqa_ten_annotator_rule_by_hand():
    others = ["pepsi"] * 10
    # 1 of 10 matching: leaving out the matcher gives 0, the 9 other subsets 1/3 -> 9/30 = 0.3.
    assert textvqa.vqa_accuracy("cola", ["cola"] + others[:9]) == approx(0.3)
    # 2 of 10: 2 subsets without one matcher -> 1/3, 8 subsets with both -> 2/3; (2/3 + 16/3) / 10 = 0.6.
    assert textvqa.vqa_accuracy("cola", ["cola", "Cola."] + others[:8]) == approx(0.6)
    # 3 of 10: 3 subsets -> 2/3, 7 subsets -> min(3/3, 1) = 1; (2 + 7) / 10 = 0.9.
    assert textvqa.vqa_accuracy("cola", ["cola"] * 3 + others[:7]) == approx(0.9)
    # 4 of 10: every subset keeps >= 3 matchers -> 1.
    assert textvqa.vqa_accuracy("cola", ["cola"] * 4 + others[:6]) == approx(1.0)
    assert textvqa.vqa_accuracy("fanta", others) == 0.0
    # Single target: exact match after normalisation.
    assert textvqa.vqa_accuracy("Two dogs.", ["2 dogs"]) == 1.0
    assert textvqa.vqa_accuracy("dogs", ["2 dogs"]) == 0.0


def test_textvqa_fixture_by_hand():
    result = textvqa.score_textvqa(read_jsonl(FIXTURES / "textvqa.jsonl"))
    # Record 0: "Coca-Cola" matches 2 of 10 -> 0.6; record 1: single target match -> 1; record 2: 0.
    assert result["accuracy"] == approx(100 * 1.6 / 3)
    assert (result["count"], result["single_target"], result["multi_answer"]) == (3, 1, 2)


def test_textvqa_bad_records():
    with pytest.raises(ScoringError, match="neither 'answers'"):
        textvqa.score_textvqa([{"prediction": "x"}])
    with pytest.raises(ScoringError, match="non-empty list of strings"):
        textvqa.score_textvqa([{"prediction": "x", "answers": []}])
    with pytest.raises(ScoringError, match="field 'answers' is str"):
        textvqa.score_textvqa([{"prediction": "x", "answers": "x"}])


# ------------------------------------------------------------------------------------------ Classification


def test_option_parsing():
    prompt = "Is the cat left of the dog?\nOptions: (a) True (b) False\n<image>"
    assert classification.parse_options(prompt) == {"a": "True", "b": "False"}
    assert classification.parse_options("options:(a) dog (b) cat (c) bird") == {"a": "dog", "b": "cat", "c": "bird"}
    assert classification.parse_options("What is it? (a) is not an option list") == {}
    assert classification.parse_options(None) == {}


SNLI = "Does the image entail the sentence?\nOptions: (a) entailment (b) neutral (c) contradiction\n<image>"


@pytest.mark.parametrize(
    "prediction, target, prompt, labels, expected",
    [
        ("(a)", "entailment", SNLI, None, True),  # letter -> option text
        ("(C) contradiction", "contradiction", SNLI, None, True),
        ("b", "neutral", SNLI, None, True),  # a bare letter
        ("(b) contradiction", "contradiction", SNLI, None, False),  # the letter decides
        ("Entailment.", "entailment", SNLI, None, True),
        ("It is neutral, not a contradiction", "neutral", SNLI, None, False),  # two labels
        ("(b) cat", "(b) cat", "Options: (a) dog (b) cat", None, True),
        ("cat", "(b) cat", "Options: (a) dog (b) cat", None, True),
        ("(a)", "(b) cat", None, None, False),  # target letter without prompt options: letters compared
        ("(b)", "(b) cat", None, None, True),
        ("It is an airplane.", "airplane", None, ["airplane", "bird"], True),
        ("airplane or bird", "airplane", None, ["airplane", "bird"], False),
        ("airplanes", "airplane", None, ["airplane", "bird"], False),
        ("The digit is 7.", "7", None, [str(d) for d in range(10)], True),
        ("17", "7", None, [str(d) for d in range(10)], False),
        ("a pickup truck", "pickup truck", None, ["pickup truck", "truck"], True),  # "truck" is inside the target
        ("a truck", "pickup truck", None, ["pickup truck", "truck"], False),
        ("TRUE", "True", None, None, True),
    ],
)
def test_classification_matching(prediction, target, prompt, labels, expected):
    assert classification.match_prediction(prediction, target, prompt, labels) is expected


def test_classification_exact_mode():
    assert classification.match_prediction("It is an airplane.", "airplane", None, ["airplane"], "exact") is False
    assert classification.match_prediction("Airplane!", "airplane", None, None, "exact") is True
    assert classification.match_prediction("(a)", "entailment", SNLI, None, "exact") is False
    with pytest.raises(ScoringError, match="matching='fuzzy'"):
        classification.match_prediction("x", "x", matching="fuzzy")


def test_classification_fixture_by_hand():
    result = classification.score_classification(read_jsonl(FIXTURES / "classification.jsonl"), task="vsr")
    # 1 "(a)" -> True right; 2 "(a) True" for False wrong; 3 "False." right; 4 "True, he is..." right
    # (labels = targets {true, false}); 5 "true or false" names both labels, wrong -> 3/5.
    assert result["accuracy"] == approx(60.0)
    assert (result["correct"], result["count"], result["labels"]) == (3, 5, ["false", "true"])


def test_classification_bad_target_letter_names_line(tmp_path):
    path = tmp_path / "cifar10.jsonl"
    path.write_text(
        json.dumps({"prompt": "Options: (a) cat (b) dog", "target": "(a) cat", "prediction": "cat"}) + "\n"
        + json.dumps({"prompt": "Options: (a) cat (b) dog", "target": "(e) bird", "prediction": "bird"}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(ScoringError, match=r"cifar10: .*cifar10.jsonl line 2: target '\(e\) bird' names option \(e\)"):
        classification.score_classification(read_jsonl(path), task="cifar10")


# -------------------------------------------------------------------------------------------------- MMAvg


def test_mmavg_by_hand_and_partial():
    scores = {"textvqa": 10, "vsr": 20, "snli_ve": 30, "cifar10": 40, "cifar100": 50, "mnist": 60,
              "pope": {"mean": {"f1": 70.0, "accuracy": 77.0}}}
    assert aggregate.mmavg(scores)["mmavg"] == approx(40.0)  # (10 + ... + 70) / 7
    assert aggregate.mmavg(scores, pope_metric="accuracy")["mmavg"] == approx(41.0)  # 280 + 7 more, / 7
    # A scorer's output object is accepted in place of a number (textvqa: its "accuracy").
    assert aggregate.mmavg(dict(scores, textvqa={"accuracy": 17.0}))["mmavg"] == approx(41.0)
    partial = {k: v for k, v in scores.items() if k != "mnist"}
    with pytest.raises(ScoringError, match="missing mnist"):
        aggregate.mmavg(partial)
    result = aggregate.mmavg(partial, allow_partial=True)
    assert result["mmavg"] == approx(220 / 6) and result["partial"] is True and result["missing"] == ["mnist"]
    with pytest.raises(ScoringError, match="MME is not part of MMAvg"):
        aggregate.mmavg(dict(scores, mme=1500.0))
    with pytest.raises(ScoringError, match="not a percentage"):
        aggregate.mmavg(dict(scores, vsr=120))


def test_mmavg_reproduces_paper_table1():
    # Poster Table 1 (results/paper/table1.csv), MixLoRA E16/r4 row: the published MMAvg is 64.10, which is
    # (40.66 + 52.70 + 43.10 + 91.59 + 57.28 + 85.25 + 78.13) / 7 = 448.71 / 7 = 64.1014...
    row = {"textvqa": 40.66, "vsr": 52.70, "snli_ve": 43.10, "cifar10": 91.59, "cifar100": 57.28,
           "mnist": 85.25, "pope": 78.13}
    assert aggregate.mmavg(row)["mmavg"] == pytest.approx(64.10, abs=0.005)
    # LoRA r4 row: published 59.64.
    row = {"textvqa": 39.44, "vsr": 53.19, "snli_ve": 33.08, "cifar10": 86.62, "cifar100": 47.36,
           "mnist": 80.89, "pope": 76.89}
    assert aggregate.mmavg(row)["mmavg"] == pytest.approx(59.64, abs=0.005)
