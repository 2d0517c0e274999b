"""The MME and CV-Bench scorers (mixlora.scoring) checked against hand-computed values and the official rules
(docs/eval_scoring.md): answer parsing, the official formulas, partial results, and malformed files.

Every expected number below is worked out by hand in the comment next to it, from the fixture files in
tests/fixtures/scoring/ or from records written inline; none was produced by running the scorers. The other
benchmarks' scorers are tested in test_scorers_mmavg.py, the command line in test_score_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixlora.scoring import ScoringError, read_jsonl
from mixlora.scoring import cvbench, mme
from scoring_fixtures import FIXTURES, approx


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
