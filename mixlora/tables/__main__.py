"""Train, evaluate and aggregate a paper table: ``python -m mixlora.tables TABLE OUT [train overrides ...]
[-- eval overrides ...] [options]``, or a grid sweep: ``python -m mixlora.tables sweep OUT ...``.

    python -m mixlora.tables table1 --list                            # the rows, their labels, the paper's numbers
    python -m mixlora.tables table1 runs/paper model.paths.llm=/ckpt/vicuna-7b-v1.3 ... -- task.mme.path=/data/mme
    python -m mixlora.tables table1 runs/t1 model=tiny data=synthetic trainer=single trainer.max_steps=1 \\
        --results runs/t1/results --rows 't1_lora_* t1c_*_r8' -- limit=2           # CPU smoke run, some rows
    python -m mixlora.tables table1 runs/paper --launcher slurm --launcher-arg partition=gpu ...
    python -m mixlora.tables table1 --help                            # every option

TABLE: table1, cfs, routing, table2 (rows: mixlora.tables.rows). OUT holds one run directory per row (OUT/<row>/),
train overrides go to every train.py call after the row's own settings, eval overrides (after a literal ``--``)
to every eval.py call after the table's own. More: docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from pathlib import Path

from .rows import TABLES, select_rows
from .runner import TableError, TableRun, cuda_visible, parse_seen_tasks, run_here
from .sweep import DEFAULTS, Sweep, int_list, run_sweep

COMMANDS = (*TABLES, "sweep")
LAUNCHERS = ("local", "submitit_local", "slurm")
# --from-env: option -> the environment variable the scripts/*.sh wrappers read it from (used when the option is
# not given; an empty variable counts as unset, as in a shell's ${VAR:-}).
ENV = {"rows": "ROWS", "dry_run": "DRY_RUN", "keep_going": "KEEP_GOING", "nproc": "NPROC", "results": "RESULTS",
       "eval_device": "EVAL_DEVICE", "torchrun": "TORCHRUN", "launcher": "LAUNCHER", "seen_eval": "SEEN_EVAL",
       "seen_tasks": "SEEN_TASKS", "task_definitions": "TASK_DEFINITIONS", "variants": "VARIANTS",
       "factors": "FACTORS", "ranks": "RANKS", "lora_ranks": "LORA_RANKS", "alpha": "ALPHA", "base": "BASE",
       "evaluate": "EVAL"}
FLAGS = ("dry_run", "keep_going", "evaluate")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", nargs="?", help="the folder of the run directories (OUT/<row>/)")
    parser.add_argument("overrides", nargs="*", metavar="override", help="train overrides (Hydra), e.g. "
                        "model.paths.llm=/ckpt/vicuna-7b-v1.3 or model=tiny data=synthetic trainer=single")
    parser.add_argument("--dry-run", action="store_true", default=None, help="print the commands, run nothing")
    parser.add_argument("--eval-device", help="eval.py's device (default: cuda when `nvidia-smi -L` works where the "
                        "evaluation runs, else cpu)")
    parser.add_argument("--from-env", action="store_true", help="take options not given here from the environment "
                        "(ROWS, DRY_RUN=1, NPROC, RESULTS, ...: what scripts/*.sh document)")


def table_parser(key: str) -> argparse.ArgumentParser:
    table = TABLES[key]
    parser = argparse.ArgumentParser(
        prog=f"python -m mixlora.tables {key}", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s OUT [train overrides ...] [-- eval overrides ...] [options]\n       %(prog)s --list",
        description="\n\n".join([
            f"{table.title} (the paper's numbers: results/paper/{table.paper}).",
            textwrap.fill(f"Rows, in order: {' '.join(table.rows)}.", 100),
            textwrap.fill("Each row: train (unless OUT/<row> holds a finished run; resume=true otherwise), then "
                          "evaluate; at the end, aggregate the rows that worked. More: docs/reproduce.md.", 100)]))
    _common(parser)
    parser.add_argument("--list", action="store_true", help="print the rows, their labels and the paper's numbers")
    parser.add_argument("--rows", action="append", help="rows to run: names or shell patterns, separated by spaces "
                        "or commas ('t1_lora_* t1c_mixlora_e16_r4'); each must match a row (default: every row)")
    parser.add_argument("--keep-going", action="store_true", default=None, help="go on after a failing row, "
                        "aggregate the rows that worked, exit 1 at the end")
    parser.add_argument("--nproc", help="processes (GPUs) per training run (default 4; ignored with trainer=single, "
                        "which runs one plain process)")
    parser.add_argument("--results", help=f"folder of the aggregated table (default {table.results})")
    parser.add_argument("--torchrun", help="the multi-process launcher (default: PY -m torch.distributed.run)")
    parser.add_argument("--launcher", help="local (default: every row here, one after another), submitit_local "
                        "(one submitit job per row, side by side on this machine) or slurm (one SLURM job per row)")
    parser.add_argument("--launcher-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a submitit setting of the jobs, over configs/hydra/launcher/{local,slurm}.yaml "
                        "(e.g. partition=gpu timeout_min=600 gpus_per_node=4)")
    if table.seen:
        parser.add_argument("--seen-eval", help="(required) folder with scienceqa.jsonl, coco.jsonl, fairface.jsonl, "
                            "inaturalist.jsonl, stvqa.jsonl, pacs.jsonl: held-out instances of the seen tasks, one "
                            '{"unique_id", "prompt", "target", "image_path"} per line')
        parser.add_argument("--seen-tasks", action="append", metavar="KEY=PATTERN[,PATTERN...]",
                            help="the specialists' training tasks instead of the rows' Vision-Flan names (shell "
                            "patterns on task_name, case-insensitive), e.g. pacs=SynthScenes+*")
    if table.task_routed():
        parser.add_argument("--task-definitions", help="data.task_definitions of the task-routed rows only, e.g. "
                            "data/synthetic/task_definitions.json (default: the rows' own)")
    return parser


def sweep_parser() -> argparse.ArgumentParser:
    from . import sweep

    parser = argparse.ArgumentParser(prog="python -m mixlora.tables sweep", allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, description=sweep.__doc__,
                                     usage="%(prog)s OUT [train overrides ...] [-- eval overrides ...] [options]")
    _common(parser)
    parser.add_argument("--variants", help="any of released, corrected, lora (default released,corrected)")
    parser.add_argument("--factors", help=f"MixLoRA's E values (default {DEFAULTS['factors']})")
    parser.add_argument("--ranks", help=f"MixLoRA's r values, each below every E (default {DEFAULTS['ranks']})")
    parser.add_argument("--lora-ranks", help=f"LoRA's r values (default {DEFAULTS['lora_ranks']})")
    parser.add_argument("--alpha", help="MixLoRA's alpha: 2E (default, as released, both variants) or 2r")
    parser.add_argument("--base", help="the experiment every job starts from (default paper_base)")
    parser.add_argument("--launcher", help="local (default: Hydra's basic launcher, one job after another), "
                        "submitit_local (hydra/launcher=local) or slurm (hydra/launcher=slurm, one job per point)")
    parser.add_argument("--no-eval", dest="evaluate", action="store_false", default=None,
                        help="train only (default: evaluate every job and aggregate)")
    parser.add_argument("--results", help="folder of the aggregated table (default OUT/results)")
    return parser


def split_separator(argv: list[str]) -> tuple[list[str], list[str]]:
    """(before, after) the first literal ``--``: options and train overrides, then eval overrides verbatim."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def fill_from_env(args: argparse.Namespace) -> dict[str, str]:
    """Set the options not given from their environment variables; returns {option: its variable} for the
    messages about them (every option not given, so that they name what the user sets)."""
    labels = {}
    for dest, var in ENV.items():
        if not hasattr(args, dest) or getattr(args, dest) not in (None, []):
            continue  # not an option of this command, or given on the command line
        labels[dest] = var
        value = os.environ.get(var, "")
        if value == "":
            continue
        if dest in FLAGS:
            if value not in ("0", "1"):
                raise TableError(f"{var} must be 0 or 1, got '{value}'")
            value = value == "1"
        elif dest in ("rows", "seen_tasks"):
            value = [value]
        elif dest == "launcher" and value == "submitit":  # scripts/sweep.sh's older name
            value = "submitit_local"
        setattr(args, dest, value)
    return labels


def check_out(parser: argparse.ArgumentParser, out: str | None) -> Path:
    if out is None:
        parser.error("missing OUT, the folder for the run directories")
    if out.startswith("-") or "=" in out:
        raise TableError(f"the first argument must be OUT, the folder for the run directories; got '{out}' "
                         f"(e.g. {parser.prog} runs/paper {out})")
    return Path(out).resolve()


def resolved(value: str | None) -> Path | None:
    """A path given by the user, resolved from the calling directory (the commands run from the repository root)."""
    return None if value is None else Path(value).resolve()


def main_table(key: str, argv: list[str]) -> int:
    before, eval_overrides = split_separator(argv)
    parser = table_parser(key)
    args = parser.parse_intermixed_args(before)
    labels = fill_from_env(args) if args.from_env else {}
    if args.list:
        from .paper import listing

        print(listing(key))
        return 0
    out = check_out(parser, args.out)
    table = TABLES[key]
    try:
        rows = select_rows(table, args.rows, source=labels.get("rows", "--rows"))
    except ValueError as err:
        raise TableError(str(err)) from err
    nproc = args.nproc or "4"
    if not nproc.isdigit() or int(nproc) < 1:
        raise TableError(f"{labels.get('nproc', '--nproc')} must be a positive integer (processes per run), "
                         f"got '{nproc}'")
    launcher = args.launcher or "local"
    if launcher not in LAUNCHERS:
        raise TableError(f"{labels.get('launcher', '--launcher')} must be one of {', '.join(LAUNCHERS)}, "
                         f"got '{launcher}'")
    if args.launcher_arg and launcher == "local":
        raise TableError("--launcher-arg needs --launcher submitit_local or slurm")
    # RESULTS, like OUT, is resolved from the calling directory (its default too: results/<table> there).
    run = TableRun(table=table, out=out, rows=rows, results=resolved(args.results or table.results),
                   train_overrides=args.overrides, eval_overrides=eval_overrides, nproc=int(nproc),
                   torchrun=shlex.split(args.torchrun) if args.torchrun else None,
                   seen_eval=resolved(getattr(args, "seen_eval", None)),
                   seen_tasks=parse_seen_tasks(getattr(args, "seen_tasks", None) or [],
                                               labels.get("seen_tasks", "--seen-tasks")),
                   task_definitions=resolved(getattr(args, "task_definitions", None)), labels=labels)
    run.check()
    dry_run = bool(args.dry_run)
    print(f"== {key}: {len(rows)} row(s) into {out}; results in {run.results}" + (" (dry run)" if dry_run else ""),
          flush=True)
    if launcher == "local":
        run.eval_device = args.eval_device or ("cuda" if cuda_visible() else "cpu")
        return run_here(run, dry_run=dry_run, keep_going=bool(args.keep_going))
    from .submit import launcher_settings, parse_launcher_args, run_submitted

    extra = parse_launcher_args(args.launcher_arg)
    gpus = launcher_settings(launcher, 1 if run.single() else run.nproc, extra).get("gpus_per_node", 0)
    # The jobs evaluate where they run: on GPUs when they are given some (submitit_local: and this machine has them).
    run.eval_device = args.eval_device or ("cuda" if gpus and (launcher == "slurm" or cuda_visible()) else "cpu")
    return run_submitted(run, launcher, extra, dry_run=dry_run, keep_going=bool(args.keep_going))


def main_sweep(argv: list[str]) -> int:
    before, eval_overrides = split_separator(argv)
    parser = sweep_parser()
    args = parser.parse_intermixed_args(before)
    labels = fill_from_env(args) if args.from_env else {}
    out = check_out(parser, args.out)
    label = lambda name: labels.get(name, f"--{name.replace('_', '-')}")  # noqa: E731
    sweep = Sweep(out=out, results=resolved(args.results) or out / "results", train_overrides=args.overrides,
                  eval_overrides=eval_overrides,
                  variants=[v for v in (args.variants or "released,corrected").replace(",", " ").split()],
                  factors=int_list(args.factors or DEFAULTS["factors"], label("factors")),
                  ranks=int_list(args.ranks or DEFAULTS["ranks"], label("ranks")),
                  lora_ranks=int_list(args.lora_ranks or DEFAULTS["lora_ranks"], label("lora_ranks")),
                  alpha=args.alpha or "2E", base=args.base or "paper_base", launcher=args.launcher or "local",
                  evaluate=args.evaluate is not False, labels=labels,
                  eval_device=args.eval_device or ("cuda" if cuda_visible() else "cpu"))
    return run_sweep(sweep, dry_run=bool(args.dry_run))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    prog = f"python -m mixlora.tables {command}"
    try:
        if command == "sweep":
            return main_sweep(rest)
        if command not in TABLES:
            raise TableError(f"unknown table '{command}'; one of {', '.join(COMMANDS)} (python -m mixlora.tables "
                             "--help)")
        return main_table(command, rest)
    except TableError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
