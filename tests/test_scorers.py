"""Scorers checked against hand-computed values and the official rules (docs/eval_scoring.md).

Every expected number below is worked out by hand in the comment next to it, from the fixture files in
tests/fixtures/scoring/ or from records written inline; none was produced by running the scorers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixlora.scoring import ScoringError, read_jsonl
from mixlora.scoring import aggregate, classification, cvbench, mme, pope, textvqa

FIXTURES = Path(__file__).parent / "fixtures" / "scoring"
REPO = Path(__file__).resolve().parents[1]


def approx(x):
    return pytest.approx(x, abs=1e-9)


# ---------------------------------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    "prediction, parsed",
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("No.", "no"),  # "no." is not exactly "no", but its first 4 characters contain "no"
        ("Not sure", "no"),  # "not " contains "no": the official tool calls this a no
        ("The answer is yes", "other"),  # "the " holds neither yes nor no
        ("Yes, there are two", "yes"),
        ("n", "other"),  # a bare "n" is not enough for the official tool
        (" yes", "yes"),  # " yes"[:4] contains "yes"
        ("  yes", "other"),  # no strip: "  ye" holds neither
        ("Nyes", "yes"),  # "yes" is checked before "no"
        ("", "other"),
    ],
)
def test_mme_official_parser(prediction, parsed):
    assert mme.parse_official(prediction) == parsed


@pytest.mark.parametrize(
    "prediction, parsed",
    [("n", "no"), ("Y", "yes"), ("  yes  ", "yes"), ("No.", "no"), ("x", "other"), ("The answer is yes", "other")],
)
def test_mme_lenient_parser(prediction, parsed):
    assert mme.parse_lenient(prediction) == parsed


def test_mme_fixture_scores_by_hand():
    result = mme.score_results_dir(FIXTURES / "mme_results")
    ex = result["subtasks"]["existence"]
    # existence: image 1 both right ("Yes"; "No." -> no), image 2 one right ("The answer is yes" -> other,
    # "Not sure" -> no), image 3 none right. acc = 3/6, acc+ = 1/3.
    assert ex["acc"] == approx(50.0)
    assert ex["acc_plus"] == approx(100 / 3)
    assert ex["score"] == approx(50 + 100 / 3)
    assert (ex["questions"], ex["images"], ex["other"]) == (6, 3, 1)
    # Non-"other" pairs (gt, pred): (y,y) (n,n) (n,n) (y,n) (n,y) -> TP 1, TN 2, FN 1, FP 1.
    assert (ex["tp"], ex["tn"], ex["fn"], ex["fp"]) == (1, 2, 1, 1)
    assert ex["precision"] == approx(50.0) and ex["recall"] == approx(50.0)
    # count: all four right (incl. "No, there are two." and "Yes, there are two") -> 100 + 100.
    assert result["subtasks"]["count"]["score"] == approx(200.0)
    # commonsense_reasoning: "yes" right, "n" is "other" -> acc 50, acc+ 0.
    assert result["subtasks"]["commonsense_reasoning"]["score"] == approx(50.0)
    # shapes (not an official subtask): "Yes" right, "Yes" for a No wrong -> 50 + 0.
    assert result["subtasks"]["shapes"]["score"] == approx(50.0)
    assert result["subtasks"]["shapes"]["group"] == "other"

    assert result["perception"] == approx(50 + 100 / 3 + 200)
    assert result["cognition"] == approx(50.0)
    assert result["total"] == approx(50 + 100 / 3 + 200 + 50)
    assert result["other_subtasks"] == approx(50.0)
    assert result["unknown_subtasks"] == ["shapes"]
    assert result["partial"] is True
    assert result["missing"] == [
        "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
        "numerical_calculation", "text_translation", "code_reasoning",
    ]
    assert result["counts"] == {"perception": 2, "cognition": 1}
    # Official order first, unknown names after.
    assert list(result["subtasks"]) == ["existence", "count", "commonsense_reasoning", "shapes"]


def test_mme_lenient_parser_is_opt_in():
    official = mme.score_results_dir(FIXTURES / "mme_results")
    lenient = mme.score_results_dir(FIXTURES / "mme_results", parser="lenient")
    # Only "n" (commonsense_reasoning) changes: lenient reads it as "no", so both answers are right.
    assert official["cognition"] == approx(50.0)
    assert lenient["cognition"] == approx(200.0)
    assert lenient["perception"] == approx(official["perception"])
    with pytest.raises(ScoringError, match="parser='loose'"):
        mme.score_results_dir(FIXTURES / "mme_results", parser="loose")


def _write(path: Path, rows):
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mme_all_fourteen_subtasks_not_partial(tmp_path):
    for name in mme.OFFICIAL_SUBTASKS:
        _write(tmp_path / f"{name}.txt", [("a.jpg", "q1", "Yes", "Yes"), ("a.jpg", "q2", "No", "Yes")])
    result = mme.score_results_dir(tmp_path)
    # Each subtask: acc 1/2, acc+ 0 -> 50. Perception 10 x 50, cognition 4 x 50.
    assert result["perception"] == approx(500.0) and result["cognition"] == approx(200.0)
    assert result["missing"] == [] and result["partial"] is False


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("a.jpg", "q", "Yes", "Yes")] * 3, r"3 lines, an odd number"),
        ([("a.jpg", "q", "Yes", "Yes"), ("b.jpg", "q", "No", "No")], r"line 1 and .*line 2 .*different images"),
        ([("a.jpg", "q", "Yes", "Yes"), ("a.jpg", "q", "Maybe", "No")], r"line 2: ground truth 'Maybe' is not Yes/No"),
        ([("a.jpg", "q", "Yes"), ("a.jpg", "q", "No", "No")], r"line 1: 3 tab-separated fields, expected 4"),
        ([("a.jpg", "q", "Yes", "Yes", "extra"), ("a.jpg", "q", "No", "No")], r"line 1: 5 tab-separated fields"),
    ],
)
def test_mme_malformed_files_name_file_and_line(tmp_path, rows, message):
    path = _write(tmp_path / "existence.txt", rows)
    with pytest.raises(ScoringError, match=message) as info:
        mme.score_results_dir(tmp_path)
    assert str(path) in str(info.value)


def test_mme_blank_line_inside_file_is_an_error_but_trailing_is_not(tmp_path):
    good = "a.jpg\tq\tYes\tYes\na.jpg\tq\tNo\tNo\n\n\n"
    (tmp_path / "count.txt").write_text(good, encoding="utf-8")
    assert mme.score_results_dir(tmp_path)["subtasks"]["count"]["score"] == approx(200.0)
    (tmp_path / "count.txt").write_text("a.jpg\tq\tYes\tYes\n\na.jpg\tq\tNo\tNo\n", encoding="utf-8")
    with pytest.raises(ScoringError, match=r"count.txt line 2: 1 tab-separated fields"):
        mme.score_results_dir(tmp_path)


def test_mme_folder_errors(tmp_path):
    with pytest.raises(ScoringError, match="is not a directory"):
        mme.score_results_dir(tmp_path / "nope")
    with pytest.raises(ScoringError, match="holds no .txt files"):
        mme.score_results_dir(tmp_path)
    _write(tmp_path / "ocr.txt", [("a.jpg", "q", "Yes", "Yes"), ("a.jpg", "q", "No", "No")])
    with pytest.raises(ScoringError, match="official name 'OCR' only in case"):
        mme.score_results_dir(tmp_path)


def test_mme_writer_layout_and_round_trip(tmp_path):
    records = [
        {"category": "OCR", "image": "x.jpg", "question": "Is it 'A'?", "answer": "Yes", "prediction": "Yes\nit is"},
        {"category": "color", "image": "c.jpg", "question": "Red?", "answer": "No", "prediction": "No."},
        {"category": "OCR", "image": "y.jpg", "question": "Is it 'B'?", "answer": "No", "prediction": "yes"},
        {"category": "OCR", "image": "x.jpg", "question": "Is it 'C'?", "answer": "No", "prediction": "no\tway"},
        {"category": "color", "image": "c.jpg", "question": "Blue?", "answer": "Yes", "prediction": "Sure"},
        {"category": "OCR", "image": "y.jpg", "question": "Is it 'D'?", "answer": "Yes", "prediction": "Yes"},
    ]
    written = mme.write_results_dir(records, tmp_path)
    assert sorted(written) == ["OCR", "color"]
    # Pairs are consecutive (x.jpg's two questions before y.jpg's), newlines/tabs in predictions -> spaces.
    assert (tmp_path / "OCR.txt").read_text(encoding="utf-8").split("\n") == [
        "x.jpg\tIs it 'A'?\tYes\tYes it is",
        "x.jpg\tIs it 'C'?\tNo\tno way",
        "y.jpg\tIs it 'B'?\tNo\tyes",
        "y.jpg\tIs it 'D'?\tYes\tYes",
        "",
    ]
    result = mme.score_results_dir(tmp_path)
    # OCR: x both right, y one right -> acc 3/4, acc+ 1/2 -> 125. color: "No." right, "Sure" other -> 50 + 0.
    assert result["subtasks"]["OCR"]["score"] == approx(125.0)
    assert result["subtasks"]["color"]["score"] == approx(50.0)
    assert result["perception"] == approx(175.0)


def test_mme_writer_rejects_bad_records(tmp_path):
    one = {"category": "OCR", "image": "x.jpg", "question": "q", "answer": "Yes", "prediction": "Yes"}
    with pytest.raises(ScoringError, match="image 'x.jpg' has 3 questions"):
        mme.write_results_dir([one, one, one], tmp_path)
    with pytest.raises(ScoringError, match="answer 'maybe' is not Yes/No"):
        mme.write_results_dir([dict(one, answer="maybe")], tmp_path)
    with pytest.raises(ScoringError, match="needs a string 'prediction'"):
        mme.write_results_dir([{k: v for k, v in one.items() if k != "prediction"}], tmp_path)
    with pytest.raises(ScoringError, match="not a plain file name"):
        mme.write_results_dir([dict(one, category="../OCR")], tmp_path)


# ------------------------------------------------------------------------------------------------ CV-Bench


@pytest.mark.parametrize(
    "prediction, choices, mode, letter",
    [
        ("(B)", None, "letter", "B"),
        ("The answer is (C) 3", None, "letter", "C"),
        ("B. two", None, "letter", "B"),  # no "(X)": first character
        ("  D", None, "letter", "D"),
        ("a", None, "letter", None),  # lower case is not an option letter
        ("(b) right", None, "letter", None),  # "(b)" is not "(X)" and "(" is not a letter
        ("2", ["3", "2"], "letter", None),
        ("2", ["3", "2"], "letter_or_choice", "B"),  # exactly one choice's text
        ("Chair.", ["lamp", "chair"], "letter_or_choice", "B"),
        ("lamp", ["lamp", "Lamp"], "letter_or_choice", None),  # two choices match: ambiguous, then "l" fails
        ("(A) chair", ["lamp", "chair"], "letter_or_choice", "A"),  # "(X)" wins over the text
    ],
)
def test_cvbench_prediction_parsing(prediction, choices, mode, letter):
    assert cvbench.parse_prediction(prediction, choices, mode) == letter


def test_cvbench_fixture_official_formula_by_hand():
    records = read_jsonl(FIXTURES / "cvbench.jsonl")
    result = cvbench.score_cvbench(records)
    # ADE20K: idx0 "(B)" right, idx1 "B" vs (A) wrong, idx2 "A" right -> 2/3.
    # COCO: idx3 "(C)" right, idx4 "(b) right" unparsed -> 1/2.
    # Omni3D: idx5 right, idx6 "a" unparsed, idx7 "(A)" right, idx8 "chair" unparsed -> 2/4.
    assert result["by_source"] == {"ADE20K": approx(200 / 3), "COCO": approx(50.0), "Omni3D": approx(50.0)}
    assert result["accuracy_2d"] == approx((200 / 3 + 50) / 2)  # 58.333...
    assert result["accuracy_3d"] == approx(50.0)
    assert result["overall"] == approx(((200 / 3 + 50) / 2 + 50) / 2)  # 54.1666...
    # Tasks: Count idx0,1,3 -> 2/3; Relation idx2,4 -> 1/2; Depth idx5,6 -> 1/2; Distance idx7,8 -> 1/2.
    assert result["by_task"] == {
        "Count": approx(200 / 3), "Depth": approx(50.0), "Distance": approx(50.0), "Relation": approx(50.0)
    }
    # Pooled accuracy (lmms-eval's number) differs from the official one: 5 of 9.
    assert result["plain_accuracy"] == approx(500 / 9)
    assert result["unparsed"] == 3
    assert result["partial"] is False

    with_choices = cvbench.score_cvbench(records, answer_parsing="letter_or_choice")
    # Only idx8 changes ("chair" is choice B): Omni3D 3/4, overall (58.333 + 75) / 2.
    assert with_choices["accuracy_3d"] == approx(75.0)
    assert with_choices["overall"] == approx(((200 / 3 + 50) / 2 + 75) / 2)


def test_cvbench_fallback_for_other_sources_is_partial():
    def rec(kind, source, pred):
        return {"type": kind, "task": "Count", "source": source, "answer": "(A)", "prediction": pred}

    records = [
        rec("2D", "synth_a", "A"), rec("2D", "synth_a", "B"), rec("2D", "synth_b", "A"), rec("3D", "synth_c", "B")
    ]
    result = cvbench.score_cvbench(records)
    # 2D sources present: synth_a 1/2 = 50, synth_b 1/1 = 100 -> mean 75; 3D: synth_c 0.
    assert result["accuracy_2d"] == approx(75.0)
    assert result["accuracy_3d"] == approx(0.0)
    assert result["overall"] == approx(37.5)
    assert result["partial"] is True and result["sources_2d"] == ["synth_a", "synth_b"]
    # Only 2D records: 3D accuracy is None and overall is the 2D accuracy.
    only_2d = cvbench.score_cvbench(records[:3])
    assert only_2d["accuracy_3d"] is None and only_2d["overall"] == approx(75.0) and only_2d["partial"] is True


def test_cvbench_missing_official_source_is_partial():
    records = [
        {"type": "2D", "task": "Count", "source": "ADE20K", "answer": "(A)", "prediction": "A"},
        {"type": "3D", "task": "Depth", "source": "Omni3D", "answer": "(A)", "prediction": "B"},
    ]
    result = cvbench.score_cvbench(records)
    assert result["accuracy_2d"] == approx(100.0) and result["overall"] == approx(50.0)
    assert result["partial"] is True


def test_cvbench_bad_answer_names_file_and_line(tmp_path):
    lines = [
        {"type": "2D", "task": "Count", "source": "COCO", "answer": "(A)", "prediction": "A"},
        {"type": "2D", "task": "Count", "source": "COCO", "answer": "B", "prediction": "B"},
    ]
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    with pytest.raises(ScoringError, match=r"preds.jsonl line 2: answer 'B' is not of the form '\(X\)'"):
        cvbench.score_cvbench(read_jsonl(path))
    bad = [dict(lines[0], type="4D")]
    with pytest.raises(ScoringError, match=r"record 1: type '4D'"):
        cvbench.score_cvbench(bad)
    with pytest.raises(ScoringError, match=r"record 1 has no 'prediction' field"):
        cvbench.score_cvbench([{k: v for k, v in lines[0].items() if k != "prediction"}])
    with pytest.raises(ScoringError, match=r"points past the 2 choices"):
        cvbench.score_cvbench([dict(lines[0], answer="(C)", choices=["x", "y"])])
    with pytest.raises(ScoringError, match="answer_parsing='loose'"):
        cvbench.score_cvbench(lines[:1], answer_parsing="loose")


def test_cvbench_predicted_letter_past_the_choices_is_wrong_not_unparsed():
    def rec(prediction):
        return {"type": "2D", "task": "Count", "source": "COCO", "answer": "(A)", "choices": ["x", "y"],
                "prediction": prediction}

    # "(A)" right; "(C)" and "D" name letters that two choices do not have: parsed, compared with (A), wrong.
    result = cvbench.score_cvbench([rec("(A)"), rec("(C)"), rec("D")])
    assert result["plain_accuracy"] == approx(100 / 3) and result["unparsed"] == 0


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


# ---------------------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "mixlora.scoring.score", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )


def test_cli_mme_json():
    proc = run_cli("mme", FIXTURES / "mme_results")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["perception"] == approx(50 + 100 / 3 + 200)
    assert out["cognition"] == approx(50.0)
    assert out["subtasks"]["existence"]["acc"] == approx(50.0)
    assert out["subtasks"]["existence"]["acc_plus"] == approx(100 / 3)
    assert out["subtasks"]["count"]["score"] == approx(200.0)
    assert "OCR" in out["missing"] and out["partial"] is True


def test_cli_cvbench_json(tmp_path):
    out_file = tmp_path / "cv.json"
    proc = run_cli("cvbench", FIXTURES / "cvbench.jsonl", "--output", out_file)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["overall"] == approx(((200 / 3 + 50) / 2 + 50) / 2)
    assert out["accuracy_2d"] == approx((200 / 3 + 50) / 2) and out["accuracy_3d"] == approx(50.0)
    assert out["by_source"]["COCO"] == approx(50.0) and out["by_task"]["Count"] == approx(200 / 3)
    assert json.loads(out_file.read_text()) == out


def run_main(capsys, *args):
    """The CLI in-process (same argparse and error handling, without another interpreter start-up)."""
    from mixlora.scoring.score import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_other_commands(capsys):
    code, out, _ = run_main(capsys, "pope", FIXTURES / "pope.jsonl")
    assert code == 0 and json.loads(out)["mean"]["f1"] == approx(65.0)
    code, out, _ = run_main(capsys, "textvqa", FIXTURES / "textvqa.jsonl")
    assert code == 0 and json.loads(out)["accuracy"] == approx(160 / 3)
    code, out, _ = run_main(capsys, "classification", FIXTURES / "classification.jsonl", "--task", "vsr")
    assert code == 0 and json.loads(out)["accuracy"] == approx(60.0) and json.loads(out)["task"] == "vsr"
    code, out, _ = run_main(capsys, "mmavg", FIXTURES / "mmavg.json")
    assert code == 0 and json.loads(out)["mmavg"] == approx(40.0)
    code, out, _ = run_main(capsys, "mme", FIXTURES / "mme_results", "--parser", "lenient")
    assert code == 0 and json.loads(out)["cognition"] == approx(200.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (("mme", "no/such/dir"), "is not a directory"),
        (("cvbench", "no/such.jsonl"), "no such file"),
        (("mme", FIXTURES / "mme_results", "--parser", "loose"), "invalid choice"),
        (("mmavg", FIXTURES / "pope.jsonl"), "not valid JSON"),
    ],
)
def test_cli_errors_exit_nonzero(capsys, args, message):
    code, out, err = run_main(capsys, *args)
    assert code == 2 and message in err and out == ""


def test_cli_malformed_file_message(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "2D"}\nnot json\n', encoding="utf-8")
    code, _, err = run_main(capsys, "cvbench", bad)
    assert code == 2 and "bad.jsonl line 2: not valid JSON" in err
    # And through a real interpreter: one line on stderr, no traceback.
    (tmp_path / "existence.txt").write_text("a.jpg\tq\tYes\tYes\nb.jpg\tq\tNo\tNo\n", encoding="utf-8")
    proc = run_cli("mme", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert "existence.txt line 1 and" in proc.stderr and "different images" in proc.stderr


def test_cli_scores_the_first_record_of_a_repeated_uid_like_eval(tmp_path, capsys):
    """A predictions file written twice over (two eval.py processes, or a resumed run) is scored as eval.py's
    metrics.json scores it: PredictionFile keeps the first record of each uid and so does the CLI."""
    rows = [
        {"uid": "a", "target": "yes", "split": "random", "prediction": "Yes"},  # TP
        {"uid": "b", "target": "no", "split": "random", "prediction": "No"},  # TN
        {"uid": "a", "target": "yes", "split": "random", "prediction": "No"},  # repeat, other answer: dropped
        {"uid": "c", "target": "no", "split": "random", "prediction": "Yes"},  # FP
        {"uid": "b", "target": "no", "split": "random", "prediction": "No"},  # repeat, same answer: dropped
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, out, err = run_main(capsys, "pope", path)
    assert code == 0
    split = json.loads(out)["splits"]["random"]
    # Kept: TP 1, TN 1, FP 1, FN 0 -> accuracy 2/3, precision 1/2, recall 1, F1 2*(1/2)/(3/2) = 2/3.
    # (Counting the repeats would give TP 1, TN 2, FP 1, FN 1: accuracy 3/5.)
    assert (split["tp"], split["tn"], split["fp"], split["fn"], split["count"]) == (1, 1, 1, 0, 3)
    assert split["accuracy"] == approx(200 / 3) and split["f1"] == approx(200 / 3)
    assert split["precision"] == approx(50.0) and split["recall"] == approx(100.0)
    assert ("2 record(s) repeat an earlier uid (1 with a different prediction; e.g. uid 'a' on line 3, first on "
            "line 1); scoring the first record of each uid, as eval.py does.") in err
    # Line numbers still point into the file after the drop: the bad record is line 4.
    common = {"type": "2D", "task": "Count", "source": "COCO", "answer": "(A)", "prediction": "A"}
    bad = [dict(common, uid="x"), dict(common, uid="x", prediction="B"), dict(common, uid="y"),
           dict(common, uid="z", answer="A")]
    path.write_text("".join(json.dumps(r) + "\n" for r in bad), encoding="utf-8")
    code, out, err = run_main(capsys, "cvbench", path)
    assert code == 2 and out == "" and "predictions.jsonl line 4: answer 'A' is not of the form" in err
