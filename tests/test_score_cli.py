"""The scorers' command line, ``python -m mixlora.scoring.score`` (docs/eval_scoring.md): JSON output of every
command, exit status 2 with a one-line message for bad input, and repeated ids scored as eval.py scores them.

References are the fixture files in tests/fixtures/scoring/ with their scores worked out by hand (the same
numbers as the scorer tests), and records written inline with hand-counted results; the CLI runs both in this
process and through a real interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoring_fixtures import FIXTURES, approx


REPO = Path(__file__).resolve().parents[1]


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
