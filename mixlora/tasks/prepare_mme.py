"""Convert a locally downloaded MME benchmark into one evaluation layout.

``mixlora.tasks.mme`` reads a raw release folder with ``from_release``; ``data/prepare_mme.py`` is this
module's command line (``python -m mixlora.tasks.prepare_mme`` is the same)::

    python data/prepare_mme.py --src MME_Benchmark_release_version --out data/mme
    python data/prepare_mme.py --parquet test-0000*-of-00004.parquet --out data/mme   # lmms-lab/MME form

Inputs (docs/benchmarks.md#mme):
- the release folder ``MME_Benchmark_release_version/<subtask>/`` in either layout:
  flat ``<stem>.jpg|.png`` beside ``<stem>.txt`` (existence, count, position, color, OCR, the cognition tasks),
  or ``images/<stem>.jpg|.png`` + ``questions_answers_YN/<stem>.txt`` (artwork, celebrity, landmark, posters,
  scene). Each txt has two lines ``question<TAB>Yes|No``.
- or the ``lmms-lab/MME`` parquet files (fields ``question_id``, ``image`` {bytes, path}, ``question``,
  ``answer``, ``category``); images are written to ``--out/images/<subtask>/``.

Output: ``--out/<subtask>.jsonl``, one line per question::

    {"question_id": "existence/000000006040.jpg", "category": "existence", "image": "000000006040.jpg",
     "image_path": "/abs/path/000000006040.jpg", "question": "Is there a train ...? Please answer yes or no.",
     "answer": "Yes"}

An image's two questions are on consecutive lines (the official ``calculation.py`` reads lines in pairs).
An image without exactly two valid questions, with an unreadable line or with no image file is left out and
reported. ``--out/summary.json`` holds per-subtask counts, missing subtasks and every problem.
Exit status 0, or 1 with ``--strict`` if anything was left out or a subtask is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
ANSWERS = {"yes": "Yes", "no": "No"}


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def _parse_txt(path: Path, problems: list) -> list[tuple[str, str]] | None:
    """Return the (question, answer) pairs of one txt, or None (with problems recorded) if unusable."""
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        answer = ANSWERS.get(parts[-1].strip().lower()) if len(parts) == 2 else None
        if answer is None or not parts[0].strip():
            problems.append(f"{path}:{line_no}: expected 'question<TAB>Yes|No', got {line!r}")
            return None
        pairs.append((parts[0].strip(), answer))
    if len(pairs) != 2:
        problems.append(f"{path}: {len(pairs)} question(s); the official scorer needs exactly 2 per image")
        return None
    return pairs


def _record(subtask: str, image_name: str, image_path: Path, question: str, answer: str) -> dict:
    return {"question_id": f"{subtask}/{image_name}", "category": subtask, "image": image_name,
            "image_path": str(image_path.resolve()), "question": question, "answer": answer}


def from_release(src: Path, problems: list) -> dict[str, list[dict]]:
    """Read the release folder; returns {subtask: records} for the subtasks present."""
    out = {}
    for subtask in tqdm(SUBTASKS, desc="MME subtasks", disable=None):  # None: only on a terminal (eval.py reads too)
        folder = src / subtask
        if not folder.is_dir():
            continue
        if (folder / "questions_answers_YN").is_dir():
            txt_folder, image_folder = folder / "questions_answers_YN", folder / "images"
        else:
            txt_folder, image_folder = folder, folder
        records = []
        for txt in sorted(txt_folder.glob("*.txt")):
            image = _find_image(image_folder, txt.stem)
            if image is None:
                problems.append(f"{txt}: no image {txt.stem}.jpg/.png/.jpeg in {image_folder}")
                continue
            pairs = _parse_txt(txt, problems)
            if pairs:
                records += [_record(subtask, image.name, image, q, a) for q, a in pairs]
        out[subtask] = records
    return out


def from_parquet(files: list[Path], out_dir: Path, problems: list) -> dict[str, list[dict]]:
    """Read lmms-lab/MME parquet files, writing each image once under out_dir/images/<subtask>/."""
    import pyarrow.parquet as pq

    groups: dict[str, list[dict]] = {}  # question_id -> rows, in first-appearance order
    for file in files:
        table = pq.ParquetFile(file)
        missing = {"question_id", "image", "question", "answer", "category"} - set(table.schema_arrow.names)
        if missing:
            raise SystemExit(f"{file}: not an lmms-lab/MME parquet file, missing columns {sorted(missing)}")
        for batch in tqdm(table.iter_batches(batch_size=64), desc=f"Reading {file.name}"):
            for row in batch.to_pylist():
                row["_file"] = file
                groups.setdefault(row["question_id"], []).append(row)
    out: dict[str, list[dict]] = {}
    for question_id, rows in groups.items():
        where = f"{rows[0]['_file']}: question_id {question_id!r}"
        subtask = rows[0]["category"]
        if subtask not in SUBTASKS:
            problems.append(f"{where}: unknown category {subtask!r}")
            continue
        answers = [ANSWERS.get(str(r["answer"]).strip().lower()) for r in rows]
        if len(rows) != 2 or None in answers:
            problems.append(f"{where}: {len(rows)} question(s) with answers {[r['answer'] for r in rows]}; "
                            "the official scorer needs exactly 2 Yes/No questions per image")
            continue
        image = rows[0]["image"] or {}
        name = Path(question_id).name
        if Path(name).suffix not in IMAGE_SUFFIXES:
            name = Path(image.get("path") or question_id.replace("/", "_") + ".png").name
        if not image.get("bytes"):
            problems.append(f"{where}: the row holds no image bytes")
            continue
        path = out_dir / "images" / subtask / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image["bytes"])
        out.setdefault(subtask, []).extend(
            _record(subtask, name, path, r["question"].strip(), a) for r, a in zip(rows, answers))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--src", help="the MME_Benchmark_release_version folder")
    source.add_argument("--parquet", nargs="+", help="lmms-lab/MME parquet file(s)")
    parser.add_argument("--out", required=True, help="output folder for <subtask>.jsonl and summary.json")
    parser.add_argument("--strict", action="store_true", help="exit 1 if anything was left out or is missing")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    if args.src:
        src = Path(args.src)
        if not src.is_dir():
            parser.error(f"--src {src} is not a folder")
        subtasks = from_release(src, problems)
    else:
        files = [Path(f) for f in args.parquet]
        for f in files:
            if not f.is_file():
                parser.error(f"--parquet {f} does not exist")
        subtasks = from_parquet(files, out, problems)
    missing = [s for s in SUBTASKS if not subtasks.get(s)]
    for subtask, records in subtasks.items():
        if records:
            with open(out / f"{subtask}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    summary = {
        "source": args.src or [str(f) for f in args.parquet],
        "subtasks": {s: {"images": len(r) // 2, "questions": len(r)} for s, r in subtasks.items() if r},
        "missing_subtasks": missing,
        "problems": problems,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    total = sum(len(r) for r in subtasks.values())
    print(f"MME: {total} questions in {len(summary['subtasks'])} subtasks written to {out}; "
          f"{len(problems)} problems; missing subtasks: {', '.join(missing) or 'none'}")
    for problem in problems[:20]:
        print("  problem:", problem)
    return 1 if args.strict and (problems or missing) else 0


if __name__ == "__main__":
    sys.exit(main())
