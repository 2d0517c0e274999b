"""Validate a locally downloaded Vision-Flan release and write a clean annotation file plus reports.

    python data/prepare_vision_flan.py --annotations annotation_191-task_1k.json \\
        --images images_191task_1k/ --out data/vision_flan [--check-images] [--strict] \\
        [--definitions vision_flan_definitions.json [--definitions-format auto|json|tsv]]

Every record is checked with the training loader's rules (``mixlora.data.dataset.parse_record``: keys, roles,
one ``<image>`` tag, non-empty answer) and its image file must exist (``--check-images`` also decodes it).
Writes into ``--out``:

- ``annotations.clean.json``: the records that passed, unchanged and in their original order;
- ``task_index.json``: ``{task_name: {"count": n, "example_instruction": str, "example_answer": str}}``;
- ``report.json``: counts and every problem ``{"index", "id", "task_name", "image", "kind", "message"}``;
- ``report.txt``: the same as readable tables;
- with ``--definitions TABLE``: ``task_definitions.json`` (``{task_name: definition}``, every entry of the table)
  for task routing (``adapter.routing_source=task data.task_definitions=data/vision_flan/task_definitions.json``).

The definitions table (VT-NLP/MixLoRA keeps it as the ``VISION_FLAN_DEF`` dict in ``llava/utils.py``; it cannot be
downloaded here, so pass a local copy) is read by ``mixlora.data.definitions.read_definitions_table``:

- JSON: an object ``{"task_name": "definition", ...}`` (e.g. that dict written with ``json.dump``) or a list of
  ``{"task_name": ..., "definition": ...}`` objects;
- TSV (``.tsv``/``.txt``, or ``--definitions-format tsv``): ``task_name<TAB>definition`` per line, an optional
  header line ``task_name<TAB>definition``.

Clean tasks without a definition are listed in the reports (``tasks_without_definition``); training with task
routing refuses them.

Exit status: 0, or 1 with ``--strict`` when any record has a problem or a clean task has no definition. Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from mixlora.constants import IMAGE_TOKEN
from mixlora.data.dataset import CORRUPT_IMAGE, MALFORMED, MISSING_IMAGE, RecordError, parse_record
from mixlora.data.definitions import (DEFINITIONS_FILE, TABLE_FORMATS, DefinitionError, missing_definitions,
                                      read_definitions_table)
from mixlora.data.images import IMAGE_ERRORS


def _check_image(path: Path, decode: bool) -> tuple[str, str] | None:
    if not path.is_file():
        return MISSING_IMAGE, f"image file {str(path)!r} does not exist"
    if decode:
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.load()
        except IMAGE_ERRORS as err:
            return CORRUPT_IMAGE, f"image file {str(path)!r} cannot be decoded ({type(err).__name__}: {err})"
    return None


def validate(records: list, images: Path, check_images: bool):
    """Return ``(clean_records, problems, task_index)`` for a list of Vision-Flan records."""
    clean, problems = [], []
    tasks: dict[str, dict] = {}
    for index, record in enumerate(tqdm(records, desc="Validating records", mininterval=1.0)):
        raw = record if isinstance(record, dict) else {}
        problem = None
        try:
            task_name, image, turns = parse_record(record)
        except RecordError as err:
            problem = (MALFORMED, str(err))
        else:
            if image is not None:
                problem = _check_image(images / image, check_images)
        if problem:
            problems.append({"index": index, "id": raw.get("id"), "task_name": raw.get("task_name"),
                             "image": raw.get("image"), "kind": problem[0], "message": problem[1]})
            continue
        clean.append(record)
        entry = tasks.setdefault(task_name, {"count": 0, "example_instruction": turns[0][1].replace(
            IMAGE_TOKEN, "").strip(), "example_answer": turns[1][1]})
        entry["count"] += 1
    return clean, problems, dict(sorted(tasks.items()))


def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def write_reports(out: Path, source: str, records: int, clean: list, problems: list, tasks: dict,
                  undefined: list | None = None) -> dict:
    """``undefined``: clean tasks without a definition (None: no --definitions given)."""
    kinds = Counter(p["kind"] for p in problems)
    by_task = defaultdict(Counter)
    for p in problems:
        by_task[p["task_name"]][p["kind"]] += 1
    report = {"annotations": source, "records": records, "clean": len(clean), "problems_by_kind": dict(kinds),
              "tasks": len(tasks), "problems": problems}
    if undefined is not None:
        report["definitions"] = {"path": DEFINITIONS_FILE, "tasks_without_definition": undefined}
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    text = [f"Vision-Flan check of {source}", f"records: {records}   clean: {len(clean)}   "
            f"problems: {len(problems)}   tasks: {len(tasks)}", ""]
    if problems:
        text += ["Problems by kind", _table(sorted(kinds.items()), ("kind", "count")), ""]
        text += ["Problems by task", _table([(str(t), sum(c.values()), ", ".join(f"{k}={v}" for k, v in c.items()))
                                             for t, c in sorted(by_task.items(), key=lambda x: str(x[0]))],
                                            ("task_name", "problems", "kinds")), ""]
        text += ["Problem records", _table([(p["index"], p["task_name"], p["kind"], p["message"]) for p in problems],
                                           ("index", "task_name", "kind", "message")), ""]
    if undefined:
        text += [f"Tasks without a definition ({len(undefined)}; task routing refuses them)", *undefined, ""]
    text += ["Tasks (clean records)", _table([(t, e["count"], e["example_instruction"][:60].replace("\n", " "))
                                              for t, e in tasks.items()], ("task_name", "count", "example")), ""]
    (out / "report.txt").write_text("\n".join(text))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="annotation_191-task_1k.json (a JSON list)")
    parser.add_argument("--images", required=True, help="images_191task_1k/ (records' 'image' are relative to it)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--check-images", action="store_true", help="also decode every image (slow)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any record has a problem "
                        "(or, with --definitions, a clean task has no definition)")
    parser.add_argument("--definitions", help="the released task-definitions table (JSON or TSV task_name -> "
                        "text); writes task_definitions.json for task routing")
    parser.add_argument("--definitions-format", default="auto", choices=TABLE_FORMATS,
                        help="format of --definitions (auto: .tsv/.txt = tsv, else json)")
    args = parser.parse_args(argv)

    source, images = Path(args.annotations), Path(args.images)
    if not source.is_file():
        parser.error(f"--annotations {source} does not exist")
    if not images.is_dir():
        parser.error(f"--images {images} is not a folder (unzip image_191-task_1k.zip first)")
    try:
        records = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        parser.error(f"{source} is not valid JSON: {err}")
    if not isinstance(records, list):
        parser.error(f"{source} holds a {type(records).__name__}; expected a JSON list of records")
    definitions = None
    if args.definitions is not None:
        try:  # read before the long validation pass: a bad table fails in seconds
            definitions = read_definitions_table(args.definitions, args.definitions_format)
        except (DefinitionError, ValueError) as err:
            parser.error(f"--definitions: {err}")

    clean, problems, tasks = validate(records, images, args.check_images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "annotations.clean.json").write_text(json.dumps(clean, ensure_ascii=False) + "\n")
    (out / "task_index.json").write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    undefined = []
    if definitions is not None:
        undefined = missing_definitions(tasks, definitions)
        (out / DEFINITIONS_FILE).write_text(json.dumps(definitions, indent=1, ensure_ascii=False) + "\n")
    report = write_reports(out, str(source), len(records), clean, problems, tasks,
                           undefined if definitions is not None else None)
    print(f"{len(records)} records -> {len(clean)} clean, {len(problems)} with problems "
          f"{report['problems_by_kind']}, {len(tasks)} tasks; reports in {out}/report.txt and report.json")
    if definitions is not None:
        print(f"{len(definitions)} task definitions -> {out / DEFINITIONS_FILE}; "
              + (f"{len(undefined)} clean task(s) have none: {', '.join(undefined[:10])}"
                 + (" ..." if len(undefined) > 10 else "") + " (task routing refuses them: add them to the table)"
                 if undefined else "every clean task has one"))
    return 1 if args.strict and (problems or undefined) else 0


if __name__ == "__main__":
    sys.exit(main())
