"""Command line for the scorers: read predictions, print the scores as JSON.

    python -m mixlora.scoring.score mme RESULTS_DIR [--parser official|lenient]
    python -m mixlora.scoring.score cvbench PREDICTIONS.jsonl [--answer-parsing letter|letter_or_choice]
    python -m mixlora.scoring.score pope PREDICTIONS.jsonl [--target-field target] [--split-field split]
    python -m mixlora.scoring.score textvqa PREDICTIONS.jsonl
    python -m mixlora.scoring.score classification PREDICTIONS.jsonl [--task vsr] [--matching standard|exact]
    python -m mixlora.scoring.score mmavg SCORES.json [--allow-partial] [--pope-metric f1|accuracy]

Every command accepts ``--output FILE`` to also write the JSON to a file. Percent values throughout.
Malformed input exits with status 2 and a one-line message on stderr (no traceback). In a JSONL file, records
repeating an earlier record's ``uid`` are dropped with a warning: the first one is scored, as eval.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from . import JsonlRecords, ScoringError, read_jsonl
from .aggregate import POPE_METRICS, mmavg
from .classification import MATCHING, score_classification
from .cvbench import ANSWER_PARSING, score_cvbench
from .mme import PARSERS, score_results_dir
from .pope import score_pope
from .textvqa import score_textvqa


def read_predictions(path: str | Path) -> JsonlRecords:
    """Read a predictions JSONL, keeping only the first record of each ``uid`` (warning on stderr if any repeat).

    Why drop rather than refuse, and why the first: eval.py's metrics.json is computed by the same rule
    (``mixlora.tasks.predictions.PredictionFile`` keeps a uid's first answer and warns about the rest), and a
    file that a resumed or doubled run wrote is exactly what this command gets asked to re-score. Refusing would
    make the CLI unable to reproduce a number eval.py reported; counting repeats (the old behaviour) weights
    those examples twice. Records without a string ``uid`` (hand-made files) have no identity and are all kept.
    """
    records = read_jsonl(path)
    kept, lines, first = [], [], {}
    repeats = conflicts = 0
    example = None
    for record, line in zip(records, records.line_numbers):
        uid = record.get("uid")
        if isinstance(uid, str) and uid in first:
            repeats += 1
            earlier = first[uid]
            if record.get("prediction") != earlier[0].get("prediction"):
                conflicts += 1
            if example is None:
                example = f"uid {uid!r} on line {line}, first on line {earlier[1]}"
            continue
        if isinstance(uid, str):
            first[uid] = (record, line)
        kept.append(record)
        lines.append(line)
    if repeats:
        print(f"warning: {records.path}: {repeats} record(s) repeat an earlier uid ({conflicts} with a different "
              f"prediction; e.g. {example}); scoring the first record of each uid, as eval.py does.",
              file=sys.stderr)
    return JsonlRecords(kept, records.path, lines)


def _mme(args) -> dict:
    return score_results_dir(args.path, parser=args.parser)


def _cvbench(args) -> dict:
    return score_cvbench(read_predictions(args.path), answer_parsing=args.answer_parsing)


def _pope(args) -> dict:
    split_field = None if args.split_field == "" else args.split_field
    return score_pope(read_predictions(args.path), target_field=args.target_field, split_field=split_field)


def _textvqa(args) -> dict:
    return score_textvqa(read_predictions(args.path))


def _classification(args) -> dict:
    return score_classification(read_predictions(args.path), task=args.task, labels=args.labels, matching=args.matching)


def _mmavg(args) -> dict:
    path = Path(args.path)
    if not path.is_file():
        raise ScoringError(f"mmavg: {path}: no such file; pass a JSON object mapping set names to scores.")
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ScoringError(f"mmavg: {path}: not valid JSON ({e.msg} at line {e.lineno}).") from None
    if not isinstance(scores, dict):
        raise ScoringError(f"mmavg: {path}: expected a JSON object {{set name: score}}, got {type(scores).__name__}.")
    return mmavg(scores, allow_partial=args.allow_partial, pope_metric=args.pope_metric)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", type=Path, default=None, help="also write the JSON result to this file")

    parser = argparse.ArgumentParser(
        prog="python -m mixlora.scoring.score",
        description="Score benchmark predictions with the official rules and print JSON (see docs/eval_scoring.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("mme", parents=[common], help="MME from an official eval_tool result folder")
    p.add_argument("path", metavar="RESULTS_DIR",
                   help="folder of <subtask>.txt files, lines 'image<TAB>question<TAB>Yes|No<TAB>prediction'")
    p.add_argument("--parser", choices=PARSERS, default="official",
                   help="prediction parser: 'official' (eval_tool/calculation.py, default) or 'lenient' (lmms-eval)")
    p.set_defaults(run=_mme)

    p = sub.add_parser("cvbench", parents=[common], help="CV-Bench from a predictions JSONL")
    p.add_argument("path", metavar="PREDICTIONS", help="JSONL with type, task, source, answer '(X)', prediction")
    p.add_argument("--answer-parsing", choices=ANSWER_PARSING, default="letter",
                   help="'letter' (first '(X)', else first character; default) or 'letter_or_choice' "
                        "(also accept an output equal to exactly one choice's text)")
    p.set_defaults(run=_cvbench)

    p = sub.add_parser("pope", parents=[common], help="POPE accuracy/precision/recall/F1/yes-ratio per split")
    p.add_argument("path", metavar="PREDICTIONS", help="JSONL with prediction, target (yes/no) and split")
    p.add_argument("--target-field", default="target", help="field holding yes/no (default: target)")
    p.add_argument("--split-field", default="split",
                   help="field naming the split (default: split); pass '' to score all records as one split")
    p.set_defaults(run=_pope)

    p = sub.add_parser("textvqa", parents=[common], help="TextVQA VQA accuracy")
    p.add_argument("path", metavar="PREDICTIONS", help="JSONL with prediction and answers (list) or target (string)")
    p.set_defaults(run=_textvqa)

    p = sub.add_parser("classification", parents=[common],
                       help="accuracy for VSR, SNLI-VE, CIFAR-10/100, MNIST")
    p.add_argument("path", metavar="PREDICTIONS", help="JSONL with prediction, target and optional prompt")
    p.add_argument("--task", default="classification", help="name used in messages and the output (e.g. vsr)")
    p.add_argument("--matching", choices=MATCHING, default="standard",
                   help="'standard' (option letters, equality, whole-word single label; default) or 'exact'")
    p.add_argument("--labels", nargs="+", default=None,
                   help="label set for whole-word matching (default: the distinct targets in the file)")
    p.set_defaults(run=_classification)

    p = sub.add_parser("mmavg", parents=[common], help="MMAvg over the 7 zero-shot sets (MME excluded)")
    p.add_argument("path", metavar="SCORES", help="JSON object: set name -> percent score or that scorer's output")
    p.add_argument("--allow-partial", action="store_true",
                   help="average the sets present and mark the result partial instead of failing")
    p.add_argument("--pope-metric", choices=POPE_METRICS, default="f1",
                   help="which POPE mean-over-splits metric enters MMAvg (default: f1)")
    p.set_defaults(run=_mmavg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except ScoringError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"error: {args.path}: a file is not UTF-8 text ({e.reason} at byte {e.start}).", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.path}: {e.strerror or e}.", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # A reader such as `| head` closed the pipe early; that is not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
