"""Split the synthetic suite into a stage-1 base mix and a disjoint stage-2 instruction set (the CPU demo).

The paper starts from a pretrained, instruction-following LLM (Vicuna) with a stage-one projector; a random-init
tiny LLM knows neither the chat format nor the task vocabulary, so LoRA/MixLoRA at r=4 on top of it learn almost
nothing (stage-2 loss stays near 4-5). The demo's stage 1 therefore trains the whole tiny stack on

    base_mix.json = every caption of stage1.json (task_name "captions") + the first ``base_per_task`` records of
                    each training task                          (the general-instruction share, like LLaVA-665K)

and stage 2 trains the adapters on ``stage2.json`` = the remaining records of each task, so no stage-2 record was
seen in stage 1. Records keep their fields; both files are written into the suite folder next to train.json.

    python -m mixlora.data.base_mix --suite data/synthetic [--base-per-task 50]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

BASE_MIX, STAGE2 = "base_mix.json", "stage2.json"


def split_base_mix(suite: str | Path, base_per_task: int = 50) -> dict:
    """Write ``suite/base_mix.json`` and ``suite/stage2.json`` (module docstring); returns their record counts.

    Raises FileNotFoundError if train.json or stage1.json is missing, ValueError if a task has no more than
    ``base_per_task`` records (stage 2 would get none of it).
    """
    suite = Path(suite)
    if not isinstance(base_per_task, int) or base_per_task < 0:
        raise ValueError(f"base_per_task must be a non-negative integer, got {base_per_task!r}")
    files = {}
    for name in ("train.json", "stage1.json"):
        if not (suite / name).is_file():
            raise FileNotFoundError(f"{suite / name} does not exist; generate the suite first: "
                                    f"python data/make_synthetic.py --out {suite} --seed 0")
        files[name] = json.loads((suite / name).read_text(encoding="utf-8"))
    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in files["train.json"]:
        by_task[record["task_name"]].append(record)
    short = {t: len(v) for t, v in by_task.items() if len(v) <= base_per_task}
    if short:
        raise ValueError(f"tasks with at most base_per_task={base_per_task} records would leave stage 2 empty: "
                         f"{short}; lower --base-per-task or generate more records per task")
    captions = [{**r, "task_name": "captions"} for r in files["stage1.json"]]
    base = captions + [r for rows in by_task.values() for r in rows[:base_per_task]]
    stage2 = [r for rows in by_task.values() for r in rows[base_per_task:]]
    for name, rows in ((BASE_MIX, base), (STAGE2, stage2)):
        tmp = suite / f".{name}.tmp"
        tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(suite / name)
    return {"base_mix": len(base), "captions": len(captions), "stage2": len(stage2), "tasks": len(by_task)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", required=True, help="the synthetic suite folder (data/synthetic)")
    p.add_argument("--base-per-task", type=int, default=50, help="records per task in the base mix (default 50)")
    a = p.parse_args(argv)
    try:
        counts = split_base_mix(a.suite, a.base_per_task)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {a.suite}/{BASE_MIX} ({counts['base_mix']} records: {counts['captions']} captions + "
          f"{a.base_per_task} per task) and {a.suite}/{STAGE2} ({counts['stage2']} records, {counts['tasks']} tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
