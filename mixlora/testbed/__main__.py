"""The interference testbed on CPU: ``python -m mixlora.testbed {demo,table,report} OUT [options]``.

    python -m mixlora.testbed demo runs/demo                  # the README's `make demo`: reduced table, 2.5-4 min
    python -m mixlora.testbed table runs/mini                 # every row, default seeds (resumable)
    python -m mixlora.testbed table runs/mini --rows lora_r2 mixc_e8_r2_instr --seeds 0 1
    python -m mixlora.testbed table runs/mini --workers 2     # two runs at a time (one per core on 2 cores)
    python -m mixlora.testbed table runs/mini --dry-run       # list the runs only
    python -m mixlora.testbed report runs/mini --dest results/mini --stem mini_table
    python -m mixlora.testbed report runs/more --merge results/mini/mini_table.json --dest results/mini --stem mini_table

Both commands generate the testbed data once (``--data``, default data/testbed), train the stage-1 base once per
OUT, then every row and seed; finished runs are skipped, so an interrupted command resumes where it stopped.
Rows: ``mixlora.testbed.rows``; what the measures mean: docs/testbed.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .recipe import DEMO, DEMO_DATA, TABLE, TABLE_DATA, Budget, build_tasks, run_dirs, run_table, seeds_for
from .rows import DEMO_ROWS, ROWS, select_rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mixlora.testbed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("demo", "table", "report"))
    parser.add_argument("out", type=Path, help="output folder (runs/demo, runs/mini, ...)")
    parser.add_argument("--data", type=Path, default=None, help="testbed data folder (generated when it has no "
                        "manifest.json; default data/testbed for demo, data/testbed_table for table and report: the "
                        "table's build has 3,000 training records per task, the demo's 600)")
    parser.add_argument("--rows", nargs="+", default=None, help=f"rows to run (default: all; demo: "
                        f"{' '.join(DEMO_ROWS)}); names: {' '.join(r.name for r in ROWS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds of every row (default: each row's own count; demo: 0 1)")
    parser.add_argument("--stage1-steps", type=int, default=None)
    parser.add_argument("--stage2-steps", type=int, default=None)
    parser.add_argument("--eval-per-task", type=int, default=None,
                        help="test instances per task and split (default: all for table, 100 for demo)")
    parser.add_argument("--overwrite-data", action="store_true",
                        help="rebuild --data if it holds a different or older testbed build (only the generator's files)")
    parser.add_argument("--workers", type=int, default=1,
                        help="run the (row, seed) pairs in this many worker processes, sharing the torch threads "
                             "(default 1: one after another, in this process); on CPU, one per core is fastest")
    parser.add_argument("--keep-going", action="store_true", help="log a failed run and go on with the next")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, train nothing")
    parser.add_argument("--dest", type=Path, default=None, help="where the report goes (default OUT)")
    parser.add_argument("--stem", default="results", help="report file names: STEM.json, STEM.md, plots/STEM_*.png")
    parser.add_argument("--merge", nargs="+", type=Path, default=(), metavar="JSON",
                        help="report only: earlier report JSONs of the same tasks whose rows OUT has not run are "
                             "carried into this report as recorded (claims are computed over all rows)")
    return parser


def _budget(args) -> Budget:
    base = DEMO if args.command == "demo" else TABLE
    changes = {k: v for k, v in (("stage1_steps", args.stage1_steps), ("stage2_steps", args.stage2_steps),
                                 ("eval_per_task", args.eval_per_task)) if v is not None}
    for name, value in changes.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return Budget(**{**base.__dict__, **changes})


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rows = select_rows(args.rows or (DEMO_ROWS if args.command == "demo" else [r.name for r in ROWS]))
        budget = _budget(args)
        if args.seeds is not None and (not args.seeds or min(args.seeds) < 0):
            raise ValueError(f"--seeds must be non-negative integers, got {args.seeds}")
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if args.merge and args.command != "report":
            raise ValueError("--merge is an option of the report command (it trains nothing)")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    demo = args.command == "demo"
    data = args.data or Path("data/testbed" if demo else "data/testbed_table")
    out, data = args.out.resolve(), data.resolve()
    command = "python -m mixlora.testbed " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    from mixlora.data.testbed import make_testbed

    tasks = build_tasks(data)
    if args.command == "report":
        return _report(out, data, tasks, command, args)
    plan = [(row, seed) for row in rows for seed in (args.seeds if args.seeds is not None else seeds_for(row, demo))]
    if args.dry_run:
        for row, seed in plan:
            for run_dir, task in run_dirs(row, seed, out, tasks):
                print(f"{row.name} seed {seed}{' task ' + task if task else ''}: {run_dir}")
        return 0
    start = time.perf_counter()
    _say(f"1/4 testbed data ({data})")
    try:
        make_testbed(data, progress=sys.stderr.isatty(), overwrite=args.overwrite_data,
                     **(DEMO_DATA if demo else TABLE_DATA))
    except (FileExistsError, ValueError) as err:  # a folder holding other data, or a half-written build
        print(f"error: {err}\n(here: --overwrite-data rebuilds {data}; --data chooses another folder)",
              file=sys.stderr)
        return 2
    failed = run_table(out, data, plan, budget, tasks, keep_going=args.keep_going, say=_say,
                       workers=args.workers)
    _say("4/4 report")
    code = _report(out, data, tasks, command, args)
    _say(f"done in {time.perf_counter() - start:.0f} s; {len(failed)} failed runs")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else code


def _report(out: Path, data: Path, tasks: list[str], command: str, args) -> int:
    from .report import markdown, write_report
    from .usage import routing_usage

    usage = None
    for name in ("mixc_e8_r2_instr", "st_e8_r2_instr", "mixc_e8_r2_prompt"):
        run = out / "runs" / f"{name}_s0"
        if (run / "adapter_model.safetensors").is_file():
            usage = routing_usage(run, data)
            break
    try:
        report = write_report(out, tasks, command, usage, dest=args.dest, stem=args.stem, merge=args.merge)
    except ValueError as err:  # a merged file that is not a report of these tasks
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
