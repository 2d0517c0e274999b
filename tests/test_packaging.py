"""The package as a user installs it, and the former import paths that stay valid.

A non-editable install (``pip install --target DIR``, offline, no dependencies) of a copy of the source tree
must hold every module and the Hydra config tree: each module under ``mixlora`` is imported from DIR in a fresh
interpreter whose working directory and ``sys.path`` exclude the repository, and the default train config is
composed from the installed package data. The aliases kept for users: ``mixlora.eval`` (now
``mixlora.scoring``), ``mixlora.tasks.<set>`` for the five classification sets, ``data/prepare_mme.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in the installed copy: argv[1] is the install folder, argv[2] the repository. Prints one JSON line.
PROBE = r"""
import importlib, json, pkgutil, sys
from pathlib import Path

site, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
# The install folder, the standard library and the third-party libraries: no repository, no working directory,
# no editable finder.
sys.path[:] = [str(site)] + [p for p in sys.path
                             if p and "__editable__" not in p and Path(p).resolve() != repo]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(type(f), "__module__", "")]

import mixlora
failures, outside = {}, []
names = sorted(m.name for m in pkgutil.walk_packages(mixlora.__path__, "mixlora.", onerror=lambda n: None))
for name in names:
    try:
        module = importlib.import_module(name)
    except Exception as err:
        failures[name] = f"{type(err).__name__}: {err}"
        continue
    origin = getattr(module, "__file__", None)
    if origin and not Path(origin).resolve().is_relative_to(site):
        outside.append(f"{name}: {origin}")

from mixlora.train.config import compose_config, shipped_config_dir
cfg = compose_config()
print(json.dumps({"mixlora": mixlora.__file__, "modules": names, "failures": failures, "outside": outside,
                  "config_dir": str(shipped_config_dir()), "config_keys": sorted(cfg.keys()),
                  "tasks": sorted(p.stem for p in (shipped_config_dir() / "task").glob("*.yaml"))}))
"""

# Runs an entry point of the installed copy as `python -m MODULE ARGS` would: argv[1] install folder, argv[2] the
# repository, argv[3] the module, the rest its arguments (the same path isolation as PROBE).
ENTRY = PROBE[:PROBE.index("import mixlora")] + r"""
import runpy
module, sys.argv = sys.argv[3], [sys.argv[3], *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _source_modules() -> set[str]:
    """Every importable module name of the source tree's mixlora/ (the reference for the installed copy)."""
    names = set()
    for path in (ROOT / "mixlora").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        # walk_packages only descends into regular packages (folders with __init__.py)
        if all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            names.add(".".join(parts))
    # The package-data folders that pyproject.toml maps into the package (package-dir) are packages too.
    return (names - {"mixlora"}) | {"mixlora.configs", "mixlora.paper"}


def test_installed_copy_imports_every_module_and_composes_the_train_config(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("mixlora", "configs", "results/paper"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--no-build-isolation", "--target", str(site), str(src)],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "mixlora" / "configs" / "train.yaml").is_file()
    assert (site / "mixlora" / "paper" / "table1.csv").is_file()  # the paper's numbers ship as package data

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", PROBE, str(site), str(ROOT)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert Path(result["mixlora"]).resolve().is_relative_to(site.resolve())
    assert result["failures"] == {}
    assert result["outside"] == []
    # pyproject.toml lists the packages by hand: a missing one would be absent from the install.
    assert set(result["modules"]) == _source_modules()
    assert Path(result["config_dir"]).resolve() == (site / "mixlora" / "configs").resolve()
    assert {"model", "adapter", "data", "trainer", "logger"} <= set(result["config_keys"])
    assert set(result["tasks"]) == {p.stem for p in (ROOT / "configs" / "task").glob("*.yaml")}
    # The entry points that train.py and eval.py wrap (and the table runner launches) need no checkout: Hydra
    # composes the installed config tree, from a folder that holds no configs/.
    for module, args, expect in [("mixlora.train.cli", ["--cfg", "job", "adapter=lora"], "kind: lora"),
                                 ("mixlora.tasks.cli", ["--cfg", "job", "run=null"], "decoding:"),
                                 ("mixlora.tables", ["table1", "--list"], "paper: MME")]:
        entry = subprocess.run([sys.executable, "-c", ENTRY, str(site), str(ROOT), module, *args],
                               capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert entry.returncode == 0, (module, entry.stderr[-3000:])
        assert expect in entry.stdout, (module, entry.stdout[-2000:])


def test_source_checkout_uses_the_top_level_configs():
    from mixlora.train.config import shipped_config_dir

    assert shipped_config_dir() == ROOT / "configs"


# A stand-in for another checkout's code: a mixlora package holding only package_data.py.
LOOKUP = "import sys; from mixlora.package_data import config_dir, paper_dir; print(config_dir(), paper_dir())"


def _other_checkout(tmp_path: Path) -> Path:
    (tmp_path / "mixlora").mkdir()
    (tmp_path / "mixlora" / "__init__.py").write_text("")
    shutil.copy(ROOT / "mixlora" / "package_data.py", tmp_path / "mixlora")
    return tmp_path


def test_source_checkout_finds_the_configs_as_package_data_and_refuses_another_checkouts(tmp_path):
    from mixlora.tables.paper import PAPER

    assert PAPER == ROOT / "results" / "paper"
    # This environment's editable install serves ROOT's folders; code imported from elsewhere must not use them.
    other = _other_checkout(tmp_path)
    run = subprocess.run([sys.executable, "-c", LOOKUP], capture_output=True, text=True, cwd=other, timeout=120)
    assert run.returncode != 0
    assert "installed from another checkout" in run.stderr and str(other / "mixlora") in run.stderr, run.stderr


def test_a_checkout_that_was_never_installed_is_told_to_install(tmp_path):
    other = _other_checkout(tmp_path)
    # -S: no site-packages, so no install of mixlora (editable or not) is visible.
    run = subprocess.run([sys.executable, "-S", "-c", LOOKUP], capture_output=True, text=True, cwd=other,
                         timeout=120)
    assert run.returncode != 0
    assert "mixlora.configs (the Hydra config tree) is not installed" in run.stderr, run.stderr
    assert "pip install -e ." in run.stderr


def test_mixlora_eval_is_an_alias_of_mixlora_scoring():
    import mixlora.eval
    import mixlora.eval.classification
    import mixlora.eval.mme
    import mixlora.scoring
    import mixlora.scoring.classification
    import mixlora.scoring.mme

    assert mixlora.eval.ScoringError is mixlora.scoring.ScoringError
    assert mixlora.eval.read_jsonl is mixlora.scoring.read_jsonl
    assert mixlora.eval.mme.score_results_dir is mixlora.scoring.mme.score_results_dir
    assert mixlora.eval.mme._UNSAFE_NAME is mixlora.scoring.mme._UNSAFE_NAME  # private names too
    assert mixlora.eval.classification.match_prediction is mixlora.scoring.classification.match_prediction


def test_former_score_command_prints_what_the_new_one_prints(tmp_path):
    # POPE by hand: 2 yes targets (1 answered yes), 1 no target answered no -> accuracy 2/3, precision 1, recall 1/2.
    records = [{"prediction": "Yes", "target": "yes", "split": "random"},
               {"prediction": "No", "target": "yes", "split": "random"},
               {"prediction": "No", "target": "no", "split": "random"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    outputs = {}
    for module in ("mixlora.eval.score", "mixlora.scoring.score"):
        run = subprocess.run([sys.executable, "-m", module, "pope", str(path)], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stderr == ""
        outputs[module] = run.stdout
    assert outputs["mixlora.eval.score"] == outputs["mixlora.scoring.score"]
    split = json.loads(outputs["mixlora.scoring.score"])["splits"]["random"]
    assert split["accuracy"] == pytest.approx(100 * 2 / 3)
    assert (split["precision"], split["recall"]) == (pytest.approx(100.0), pytest.approx(50.0))


@pytest.mark.parametrize("name", ["vsr", "snli_ve", "cifar10", "cifar100", "mnist"])
def test_classification_set_paths_and_configs(name):
    import importlib

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mixlora.tasks.classification import ClassificationTask

    module = importlib.import_module(f"mixlora.tasks.{name}")  # the former module path
    task = module.build("x.jsonl")
    assert isinstance(task, ClassificationTask)
    assert (task.name, task.mmavg_set, task.path) == (name, name, "x.jsonl")
    assert module.build("x.jsonl", name="renamed").mmavg_set == name

    # A user config naming the former target, and the shipped task config.
    legacy = instantiate({"_target_": f"mixlora.tasks.{name}.build", "path": "y.jsonl"})
    assert (legacy.name, legacy.mmavg_set) == (name, name)
    shipped = OmegaConf.load(ROOT / "configs" / "task" / f"{name}.yaml")[name]
    shipped.path = "z.jsonl"
    built = instantiate(shipped)
    assert isinstance(built, ClassificationTask)
    assert (built.name, built.mmavg_set, built.max_new_tokens, built.matching) == (name, name, 16, "standard")


def test_data_prepare_mme_is_the_package_command(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "data" / "prepare_mme.py"), "--help"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--src" in run.stdout and "--parquet" in run.stdout
