"""Convert a locally downloaded CV-Bench folder into one JSONL with resolved image paths.

    python data/prepare_cvbench.py --src CV-Bench --out data/cvbench

Input (``nyu-visionx/CV-Bench``, docs/benchmarks.md#cv-bench): ``test_2d`` and ``test_3d`` as ``.jsonl`` or ``.parquet``
(the older single ``test`` file is read when neither exists), images under ``img/2D/{count,relation}/`` and
``img/3D/{depth,distance}/``. A JSONL row's image is ``src/<filename>`` (falling back to its ``image`` string);
a parquet row's image is ``src/<filename>`` when that file exists, else its embedded bytes are written to
``--out/<filename>``.

Output ``--out/cvbench.jsonl``: every record field (``idx``, ``type``, ``task``, ``question``, ``choices``,
``answer``, ``prompt``, ``filename``, ``source``, ...) except embedded image bytes, plus ``split`` and
``image_path`` (absolute). ``--out/summary.json`` counts records per split/task/source and lists problems
(records whose image cannot be found are left out). Exit 0, or 1 with ``--strict`` if anything was left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

DEFAULT_SPLITS = ("test_2d", "test_3d")


def _find_inputs(src: Path, splits) -> list[tuple[str, Path]]:
    inputs = []
    for split in splits:
        for suffix in (".jsonl", ".parquet"):
            if (src / (split + suffix)).is_file():
                inputs.append((split, src / (split + suffix)))
                break
    return inputs


def _rows(path: Path):
    """Yield (row number, record) from a JSONL or parquet file."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as err:
                        raise SystemExit(f"{path}:{line_no}: invalid JSON ({err})") from err
        return
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _resolve_image(row: dict, src: Path, out: Path, split: str) -> Path | None:
    names = [row.get("filename"), row.get("image") if isinstance(row.get("image"), str) else None]
    for name in filter(None, names):
        for base in (src, src / "img"):
            if (base / name).is_file():
                return base / name
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes"):
        name = row.get("filename") or f"img/{split}/{row.get('idx')}{Path(image.get('path') or 'x.png').suffix}"
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image["bytes"])
        return path
    return None


def convert(src: Path, out: Path, splits) -> tuple[list[dict], list[str]]:
    inputs = _find_inputs(src, splits) or _find_inputs(src, ("test",))
    if not inputs:
        raise SystemExit(f"{src}: no {' / '.join(splits)} (.jsonl or .parquet) and no test file found; pass the "
                         "CV-Bench folder downloaded from nyu-visionx/CV-Bench")
    records, problems = [], []
    for split, path in inputs:
        for row_no, row in tqdm(_rows(path), desc=f"Reading {path.name}"):
            image = _resolve_image(row, src, out, split)
            if image is None:
                problems.append(f"{path}:{row_no} (idx {row.get('idx')}, task {row.get('task')!r}): image "
                                f"{row.get('filename')!r} not found under {src} and no embedded bytes")
                continue
            record = {k: v for k, v in row.items() if not (k == "image" and isinstance(v, dict))}
            record.update(split=split, image_path=str(image.resolve()))
            records.append(record)
    return records, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="the CV-Bench folder (test_2d/test_3d files and img/)")
    parser.add_argument("--out", required=True, help="output folder for cvbench.jsonl and summary.json")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="file stems to read")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any record was left out")
    args = parser.parse_args(argv)

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        parser.error(f"--src {src} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    records, problems = convert(src, out, args.splits)
    with open(out / "cvbench.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    summary = {"source": str(src), "records": len(records),
               "by_split": dict(Counter(r["split"] for r in records)),
               "by_task": dict(Counter(str(r.get("task")) for r in records)),
               "by_source": dict(Counter(str(r.get("source")) for r in records)), "problems": problems}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"CV-Bench: {len(records)} records written to {out / 'cvbench.jsonl'}; {len(problems)} left out")
    for problem in problems[:20]:
        print("  problem:", problem)
    return 1 if args.strict and problems else 0


if __name__ == "__main__":
    sys.exit(main())
