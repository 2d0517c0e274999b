"""MME scoring with the rules of the official ``eval_tool/calculation.py`` (docs/benchmarks.md#mme).

Result layout (what the official tool reads, and what ``write_results_dir`` produces)::

    RESULTS_DIR/<subtask>.txt      one file per subtask, e.g. existence.txt, OCR.txt, code_reasoning.txt
    each line:  image \\t question \\t ground_truth \\t prediction
    an image's two questions on consecutive lines (lines are read in pairs)

Parsing of a prediction (``parse_official``, the default): lowercase it (no strip); if it equals "yes" or
"no" use that; else if its first 4 characters contain "yes" it is yes; else if they contain "no" it is no;
else "other", which is always wrong. So "The answer is yes" is wrong while "No." and "Not sure" are "no".
``parse_lenient`` is lmms-eval's variant (strip, drop ".", bare "y"/"n"); it must be asked for by name.

Per subtask with Q questions on Q/2 images::

    acc      = #correct / Q                          ("other" counts as wrong)
    acc_plus = #images with both answers right / (Q/2)
    score    = 100·acc + 100·acc_plus                (max 200)

Perception = sum of its 10 subtask scores (max 2000); Cognition = sum of its 4 (max 800). The tool's
confusion counts (yes = positive) and precision/recall are over the non-"other" answers only. All
fractions are reported in percent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from . import ScoringError

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
OFFICIAL_SUBTASKS = PERCEPTION + COGNITION
PARSERS = ("official", "lenient")


class MMEQuestion(NamedTuple):
    """One scored question. ``source``/``line`` locate it for error messages (empty/0 when built in code)."""

    image: str
    question: str
    answer: str  # ground truth, "Yes" or "No" (any case)
    prediction: str
    source: str = ""
    line: int = 0


def parse_official(prediction: str) -> str:
    """The official tool's parser: "yes", "no" or "other" (see the module docstring)."""
    text = prediction.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def parse_lenient(prediction: str) -> str:
    """lmms-eval's parser: lowercase, strip, delete every "."; a bare "y"/"n" counts; else the official prefix rule.

    Not the default: it scores some answers right that the official tool scores wrong (e.g. "n", " yes").
    """
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def get_parser(name: str) -> Callable[[str], str]:
    """The parser called ``name`` (one of ``PARSERS``)."""
    if name not in PARSERS:
        raise ScoringError(
            f"mme: parser={name!r} is not a valid option; choose one of {', '.join(map(repr, PARSERS))}."
        )
    return parse_official if name == "official" else parse_lenient


def _where(q: MMEQuestion, index: int) -> str:
    return f"{q.source} line {q.line}" if q.source else f"question {index + 1}"


def check_questions(questions: Sequence[MMEQuestion], subtask: str) -> None:
    """Check the tool's invariants: an even number of questions, pairs share an image, ground truth is yes/no."""
    if not questions:
        raise ScoringError(f"mme: subtask '{subtask}' has no questions; remove its file or fill it.")
    if len(questions) % 2:
        where = questions[0].source or f"subtask '{subtask}'"
        raise ScoringError(
            f"mme: {where} has {len(questions)} lines, an odd number; every image needs exactly two questions on "
            "consecutive lines."
        )
    for i, q in enumerate(questions):
        if q.answer.lower() not in ("yes", "no"):
            raise ScoringError(
                f"mme: {_where(q, i)}: ground truth {q.answer!r} is not Yes/No; the third field must be Yes or No."
            )
    for i in range(0, len(questions), 2):
        a, b = questions[i], questions[i + 1]
        if a.image != b.image:
            raise ScoringError(
                f"mme: {_where(a, i)} and {_where(b, i + 1)} form a pair but name different images "
                f"({a.image!r} vs {b.image!r}); put each image's two questions on consecutive lines."
            )


def score_subtask(questions: Sequence[MMEQuestion], parser: str = "official", subtask: str = "subtask") -> dict:
    """Score one subtask; ``questions`` in file order, pairs consecutive. Returns percent metrics and counts."""
    parse = get_parser(parser)
    check_questions(questions, subtask)
    gts = [q.answer.lower() for q in questions]
    preds = [parse(q.prediction) for q in questions]
    right = [g == p for g, p in zip(gts, preds)]
    n_images = len(questions) // 2
    both_right = sum(right[i] and right[i + 1] for i in range(0, len(right), 2))
    acc = 100.0 * sum(right) / len(right)
    acc_plus = 100.0 * both_right / n_images
    # The tool's confusion matrix skips "other" answers; yes is the positive class.
    tp = sum(g == "yes" and p == "yes" for g, p in zip(gts, preds))
    fn = sum(g == "yes" and p == "no" for g, p in zip(gts, preds))
    tn = sum(g == "no" and p == "no" for g, p in zip(gts, preds))
    fp = sum(g == "no" and p == "yes" for g, p in zip(gts, preds))
    # sklearn (which the tool calls) returns 0 for an undefined precision/recall; so do we.
    precision = 100.0 * tp / (tp + fp) if tp + fp else 0.0
    recall = 100.0 * tp / (tp + fn) if tp + fn else 0.0
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        "score": acc + acc_plus,
        "questions": len(questions),
        "images": n_images,
        "other": preds.count("other"),
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "precision": precision,
        "recall": recall,
    }


def score_mme(subtasks: Mapping[str, Sequence[MMEQuestion]], parser: str = "official") -> dict:
    """Score every subtask and total them.

    Returns (scores in points, acc-type values in percent)::

        perception, cognition   sums over the official subtasks present (0.0 when none of the group is present)
        total                   perception + cognition
        other_subtasks          sum over subtasks that are not one of the 14 official names (synthetic suites)
        subtasks                {name: score_subtask(...) + "group"}; official order, then unknown names sorted
        missing                 official subtasks absent, in official order
        unknown_subtasks        names not among the 14
        counts                  {"perception": n present, "cognition": n present}
        partial                 True when any official subtask is missing
        parser                  the parser used
    """
    get_parser(parser)
    if not subtasks:
        raise ScoringError("mme: no subtasks to score; expected files such as existence.txt or OCR.txt.")
    _check_names(subtasks)
    unknown = sorted(name for name in subtasks if name not in OFFICIAL_SUBTASKS)
    order = [name for name in OFFICIAL_SUBTASKS if name in subtasks] + unknown
    scored = {}
    for name in order:
        scored[name] = score_subtask(subtasks[name], parser=parser, subtask=name)
        scored[name]["group"] = "perception" if name in PERCEPTION else "cognition" if name in COGNITION else "other"
    perception = sum(scored[n]["score"] for n in PERCEPTION if n in scored)
    cognition = sum(scored[n]["score"] for n in COGNITION if n in scored)
    missing = [n for n in OFFICIAL_SUBTASKS if n not in subtasks]
    return {
        "perception": float(perception),
        "cognition": float(cognition),
        "total": float(perception + cognition),
        "other_subtasks": float(sum(scored[n]["score"] for n in unknown)),
        "subtasks": scored,
        "missing": missing,
        "unknown_subtasks": unknown,
        "counts": {
            "perception": sum(n in scored for n in PERCEPTION),
            "cognition": sum(n in scored for n in COGNITION),
        },
        "partial": bool(missing),
        "parser": parser,
    }


def _check_names(names: Iterable[str]) -> None:
    # A near miss such as "ocr" would silently become an unknown subtask and drop out of Perception.
    lowered = {n.lower(): n for n in OFFICIAL_SUBTASKS}
    for name in names:
        official = lowered.get(name.lower())
        if official is not None and official != name:
            raise ScoringError(
                f"mme: subtask '{name}' differs from the official name '{official}' only in case; rename it "
                f"(file {official}.txt) so it counts towards {'Perception' if official in PERCEPTION else 'Cognition'}."
            )


# ---- the official result-folder layout ------------------------------------------------------------------


def read_subtask_file(path: str | Path) -> list[MMEQuestion]:
    """Read one ``<subtask>.txt`` of the official layout, checking fields, pairs and ground truth.

    Lines are split on "\\n" only after universal-newline decoding (like the tool's ``readlines``); the line
    terminator is dropped, the prediction is kept as is (a trailing newline never changes the official parse).
    Trailing blank lines at the end of the file are ignored; any other blank line is an error.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    questions = []
    for line_no, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) != 4:
            raise ScoringError(
                f"mme: {path} line {line_no}: {len(fields)} tab-separated fields, expected 4 "
                "(image, question, ground truth, prediction); remove tabs/newlines inside the prediction."
            )
        questions.append(MMEQuestion(*fields, source=str(path), line=line_no))
    check_questions(questions, path.stem)
    return questions


def read_results_dir(results_dir: str | Path) -> dict[str, list[MMEQuestion]]:
    """Read every ``*.txt`` in ``results_dir`` (subtask name = file stem). Other files are ignored."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ScoringError(f"mme: {results_dir} is not a directory; pass the folder holding <subtask>.txt files.")
    files = sorted(p for p in results_dir.glob("*.txt") if p.is_file())
    if not files:
        raise ScoringError(
            f"mme: {results_dir} holds no .txt files; expected the official layout, e.g. existence.txt with lines "
            "'image<TAB>question<TAB>Yes|No<TAB>prediction'."
        )
    return {p.stem: read_subtask_file(p) for p in files}


def score_results_dir(results_dir: str | Path, parser: str = "official") -> dict:
    """Read and score an official-layout result folder (see ``score_mme`` for the returned keys)."""
    get_parser(parser)
    return score_mme(read_results_dir(results_dir), parser=parser)


_UNSAFE_NAME = re.compile(r"[/\\\x00]|^\.\.?$")


def _one_line(text: str) -> str:
    # Tabs and newlines would break the line/field layout. Replacing each by one space (length kept, so the
    # first 4 characters stay the same ones) never changes the official parse: "yes"/"no" contain no
    # whitespace, so no match can be created or destroyed.
    return text.translate(_LAYOUT_BREAKERS)


_LAYOUT_BREAKERS = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def write_results_dir(records: Sequence[Mapping], results_dir: str | Path) -> dict[str, Path]:
    """Write prediction records in the official layout; returns {subtask: file path}. Existing files are replaced.

    Each record needs ``category`` (subtask name, e.g. "OCR"), ``image`` (file name), ``question``,
    ``answer`` ("Yes"/"No") and ``prediction`` (the raw model output). Every image must have exactly two
    records per category; they are written consecutively, images in order of first appearance.
    """
    fields = ("category", "image", "question", "answer", "prediction")
    groups: dict[str, dict[str, list[Mapping]]] = {}
    for i, record in enumerate(records):
        for key in fields:
            if not isinstance(record.get(key), str):
                raise ScoringError(
                    f"mme writer: record {i + 1} needs a string '{key}' field (got {record.get(key)!r})."
                )
        category, image = record["category"], record["image"]
        if _UNSAFE_NAME.search(category) or not category:
            raise ScoringError(f"mme writer: record {i + 1} category {category!r} is not a plain file name.")
        if "\t" in image or "\n" in image or "\r" in image:
            raise ScoringError(f"mme writer: record {i + 1} image name {image!r} contains a tab or newline.")
        if record["answer"].lower() not in ("yes", "no"):
            raise ScoringError(f"mme writer: record {i + 1} answer {record['answer']!r} is not Yes/No.")
        groups.setdefault(category, {}).setdefault(image, []).append(record)
    if not groups:
        raise ScoringError("mme writer: no records to write.")
    _check_names(groups)
    for category, images in groups.items():  # validate everything before writing anything
        for image, items in images.items():
            if len(items) != 2:
                raise ScoringError(
                    f"mme writer: category '{category}' image {image!r} has {len(items)} questions; "
                    "MME needs exactly 2."
                )
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for category, images in groups.items():
        path = results_dir / f"{category}.txt"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for items in images.values():
                for r in items:
                    row = [r["image"], _one_line(r["question"]), r["answer"], _one_line(r["prediction"])]
                    f.write("\t".join(row) + "\n")
        written[category] = path
    return written
