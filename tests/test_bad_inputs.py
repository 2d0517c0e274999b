"""Bad inputs a new user runs into: each gives one message naming the problem and the fix (exit status 2 on the
command line), and a shared run directory cannot run code.

Expectations are hand-written: the messages' key words, the exit status, which turn texts a corpus holds, and
that a file a hostile config asks for is not written. The command-line tests run train.py / eval.py in a
subprocess (a few seconds each); the rest call the functions the entry points call.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mixlora.build import (BUILDER_TARGETS, UntrustedConfigError, build_stack, build_tokenizer_from_config,
                           check_builder_targets, corpus_texts, load_run, save_run)
from mixlora.data.dataset import DataError
from mixlora.tasks.common import TaskError
from mixlora.train import ConfigError, compose_config, run
from mixlora.train.validate import preflight

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import small  # noqa: E402  (the train tests' fast-run overrides)

ROOT = Path(__file__).resolve().parents[1]
TINY = "mixlora.model.tiny.build_tiny_llava"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=1, stage1_size=0, seen_per_task=1,
                   progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(suite, tmp_path_factory):
    """A saved tiny run (no adapter), copied by each test that edits it."""
    cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    stack = build_stack(cfg, build_tokenizer_from_config(cfg.tokenizer, [suite / "train.json"]))
    return save_run(tmp_path_factory.mktemp("run") / "run", stack, OmegaConf.create({"model": cfg}))


def hostile_copy(run_dir: Path, tmp_path: Path, builder: dict) -> Path:
    """A copy of ``run_dir`` whose config.yaml names ``builder``, as someone sharing a run could edit it."""
    run = Path(shutil.copytree(run_dir, tmp_path / "shared_run"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["builder"] = builder
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def own_builder(**ids):
    """A user's own builder, not on the allow-list: the tiny stack under another name."""
    from mixlora.model.tiny import build_tiny_llava

    return build_tiny_llava(**ids)


# ------------------------------------------------------------------- (A) configs must not run arbitrary code
def test_a_shared_run_directory_cannot_run_code(run_dir, tmp_path):
    victim = tmp_path / "written_by_the_config"
    run = hostile_copy(run_dir, tmp_path, {"_target_": "shutil.copyfile", "src": str(run_dir / "config.yaml"),
                                           "dst": str(victim)})
    with pytest.raises(UntrustedConfigError) as err:
        load_run(run)
    assert not victim.exists()
    message = str(err.value)
    assert message.startswith(f"{run / 'config.yaml'}: model.builder._target_='shutil.copyfile' is not one of the "
                              "project's model builders, so it is not called")
    assert TINY in message and "MIXLORA_TRUSTED_BUILDERS=shutil.copyfile" in message


def test_eval_py_refuses_a_hostile_run_with_exit_status_2(suite, run_dir, tmp_path):
    victim = tmp_path / "written_by_the_config"
    run = hostile_copy(run_dir, tmp_path, {"_target_": "shutil.copyfile", "src": str(run_dir / "config.yaml"),
                                           "dst": str(victim)})
    proc = cli("eval.py", f"run={run}", "tasks=[mme]", f"data_root={suite}", "limit=1", "progress=false",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {run / 'config.yaml'}: model.builder._target_='shutil.copyfile' is not one of" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not victim.exists()


@pytest.mark.parametrize("builder, message", [
    ({"_target_": TINY, "seed": {"_target_": "shutil.copyfile", "src": "a", "dst": "b"}},
     "model.builder.seed._target_='shutil.copyfile' is not one of the project's model builders"),
    ({"_target_": TINY, "_args_": [{"_target_": "os.system", "_args_": ["true"]}]},
     r"model.builder._args_\[0\]._target_='os.system' is not one of"),
    ({"_target_": TINY, "_partial_": True}, "model.builder._partial_ is set, but a model builder must return the model"),
    ({"vision_width": 64}, "model.builder needs a _target_"),
    ({"_target_": ["not", "a", "name"]}, r"model.builder._target_=\['not', 'a', 'name'\] is not one of"),
])
def test_nested_targets_and_hydra_special_keys_are_checked(builder, message):
    with pytest.raises(UntrustedConfigError, match=message):
        check_builder_targets(builder, "cfg.yaml")


def test_targets_are_checked_after_interpolation(monkeypatch):
    monkeypatch.setenv("MIXLORA_TEST_BUILDER", "shutil.copyfile")
    cfg = OmegaConf.create({"builder": {"_target_": "${oc.env:MIXLORA_TEST_BUILDER}"}})
    with pytest.raises(UntrustedConfigError, match="_target_='shutil.copyfile' is not one of"):
        check_builder_targets(cfg.builder)


def test_every_builder_of_configs_model_is_allowed():
    def targets(node):
        if isinstance(node, dict):
            yield from ([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                yield from targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    found = {t for f in (ROOT / "configs/model").glob("*.yaml") for t in targets(yaml.safe_load(f.read_text()))}
    assert found == {"mixlora.model.tiny.build_tiny_llava", "mixlora.build.build_pretrained_llava"}
    assert found <= BUILDER_TARGETS


def test_an_own_builder_is_called_only_when_trusted_by_name(suite, monkeypatch):
    tok = build_tokenizer_from_config({"kind": "local_bpe", "vocab_size": 400}, [suite / "train.json"])
    cfg = {"builder": {"_target_": f"{__name__}.own_builder", "seed": 0}}
    with pytest.raises(UntrustedConfigError, match=f"MIXLORA_TRUSTED_BUILDERS={__name__}.own_builder"):
        build_stack(cfg, tok)
    assert build_stack(cfg, tok, trusted_builders=[f"{__name__}.own_builder"]).model.num_image_tokens == 64
    monkeypatch.setenv("MIXLORA_TRUSTED_BUILDERS", f"some.other_builder, {__name__}.own_builder")
    assert build_stack(cfg, tok).model.num_image_tokens == 64


def test_train_refuses_an_untrusted_builder_before_any_work(suite, tmp_path):
    victim = tmp_path / "written_by_the_config"
    cfg = compose_config(small(suite, tmp_path / "run", "model.builder._target_=shutil.copyfile",
                               f"+model.builder.src={suite / 'train.json'}", f"+model.builder.dst={victim}"))
    with pytest.raises(ConfigError, match=r"the model config \(configs/model/\*.yaml \+ overrides\): "
                                          r"model.builder._target_='shutil.copyfile' is not one of"):
        preflight(cfg)
    assert not victim.exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------- (B) the tokenizer corpus uses the dataset's rules
GOOD = {"task_name": "t", "image": "a.png",
        "conversations": [{"from": "human", "value": "What colour?\n<image>"}, {"from": "gpt", "value": "red"}]}
STRING_CONVERSATIONS = {"task_name": "t", "conversations": "hello"}
NULL_TURN = {"task_name": "t", "conversations": [None, {"from": "gpt", "value": "x"}]}
CAPTION = {"conversations": [{"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "A caption."}]}


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_tokenizer_corpus_skips_malformed_records_like_the_dataset(tmp_path, layout):
    records = [GOOD, STRING_CONVERSATIONS, NULL_TURN, CAPTION]
    path = tmp_path / f"train.{layout}"
    path.write_text(json.dumps(records) if layout == "json" else "".join(json.dumps(r) + "\n" for r in records))
    texts, problems = corpus_texts([path])
    # A record without task_name (stage-1 captions) still counts: the tokenizer does not use task names.
    assert texts == ["What colour?\n<image>", "red", "Describe it.", "A caption."]
    assert problems == [
        f"{path}: record 1 (task_name='t'): 'conversations' must be a non-empty list of turns, got 'hello'. Fix the "
        "record, or remove it with data/prepare_vision_flan.py, or load with on_error='skip'.",
        f"{path}: record 2 (task_name='t'): turn 0 must be an object with 'from' and 'value', got None. Fix the "
        "record, or remove it with data/prepare_vision_flan.py, or load with on_error='skip'."]
    with pytest.raises(DataError, match=r"record 1 \(task_name='t'\): 'conversations' must be a non-empty list"):
        corpus_texts([path], on_error="raise")
    tok = build_tokenizer_from_config({"kind": "local_bpe", "vocab_size": 300}, [path])  # crashed before
    assert tok.convert_tokens_to_ids("<image>") == 4


def test_tokenizer_corpus_refuses_unreadable_and_unusable_files(tmp_path):
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([GOOD, 5]))  # a non-object record: the dataset cannot read the file either
    with pytest.raises(DataError, match=f"{mixed}: not a readable JSON list of records"):
        build_tokenizer_from_config({"kind": "local_bpe"}, [mixed])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([STRING_CONVERSATIONS]))
    with pytest.raises(DataError, match=rf"the tokenizer corpus \({broken}\) holds no usable conversation to train "
                                        r"the local BPE tokenizer on \(1 malformed record\(s\); first: .*got 'hello'"):
        build_tokenizer_from_config({"kind": "local_bpe"}, [broken])


def _with_bad_record(suite: Path, tmp_path: Path) -> Path:
    path = tmp_path / "train_with_a_bad_record.json"
    path.write_text(json.dumps(json.loads((suite / "train.json").read_text()) + [STRING_CONVERSATIONS]))
    return path


def test_skip_mode_trains_past_a_malformed_record(suite, tmp_path):
    annotations = _with_bad_record(suite, tmp_path)
    summary = run(compose_config(small(suite, tmp_path / "run", f"data.annotations={annotations}",
                                       "data.on_error=skip", "trainer.max_steps=1")))
    assert summary["steps"] == 1


def test_cli_raise_mode_names_the_malformed_record_with_exit_status_2(suite, tmp_path):
    annotations = _with_bad_record(suite, tmp_path)
    index = len(json.loads((suite / "train.json").read_text()))
    proc = cli("train.py", *small(suite, tmp_path / "run", f"data.annotations={annotations}", "data.on_error=raise",
                                  "trainer.max_steps=1"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"train.py: error: {annotations}: record {index} (task_name='t'): 'conversations' must be a non-empty "
            "list of turns, got 'hello'. Fix the record") in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------- (C) data and trainer errors, one message
def test_unreadable_or_empty_annotations_are_refused_before_work(suite, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"task_name": "t"')
    with pytest.raises(ConfigError, match=f"data.annotations: {bad}: not a readable JSON list of records"):
        preflight(compose_config(small(suite, tmp_path / "run", f"data.annotations={bad}")))
    for text in ("[]", "", "\n"):
        empty = tmp_path / "empty.json"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=f"data.annotations: {empty}: the file holds no records"):
            preflight(compose_config(small(suite, tmp_path / "run", f"data.annotations={empty}")))
    assert not (tmp_path / "run").exists()


def test_max_length_below_the_image_tokens_names_the_key(suite, tmp_path):
    with pytest.raises(ConfigError, match=r"data.max_length=32 leaves no room for text: every sample holds the "
                                          r"model's 64 image positions; raise data.max_length well above 64"):
        run(compose_config(small(suite, tmp_path / "run", "data.max_length=32")))


@pytest.mark.parametrize("target, message", [
    ("torch.optim.AdamX", r"trainer.optimizer._target_='torch.optim.AdamX' cannot be imported \(AttributeError: "
                          r"module 'torch.optim' has no attribute 'AdamX'\); fix the name"),
    ("AdamW", r"trainer.optimizer._target_='AdamW' cannot be imported"),
    ("torch.nn.Linear", r"trainer.optimizer._target_='torch.nn.Linear' is not a torch.optim.Optimizer subclass"),
])
def test_optimizer_target_typos_are_refused_before_work(suite, tmp_path, target, message):
    with pytest.raises(ConfigError, match=message):
        preflight(compose_config(small(suite, tmp_path / "run", f"trainer.optimizer._target_={target}")))


# ------------------------------------------------------------------------ (D) errors Hydra used to hit first
def test_cli_output_dir_that_is_a_file_exits_2(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    for out in (existing, existing / "run"):
        proc = cli("train.py", f"output_dir={out}", "trainer.max_steps=2", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip() == (f"train.py: error: output_dir={str(out)!r}: {str(existing)!r} exists and is "
                                       "not a folder; choose another output_dir")
    assert existing.read_text() == "keep me"


def test_eval_unknown_task_name_is_a_task_error_before_anything_else(tmp_path):
    from hydra import compose, initialize_config_dir

    spec = importlib.util.spec_from_file_location("mixlora_eval_script", ROOT / "eval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="eval", overrides=["run=null", "tasks=[mmee]", f"data_root={tmp_path / 'suite'}"])
    with pytest.raises(TaskError, match=r"tasks lists 'mmee', but there is no task config for it; known: \['cifar10'"):
        script.run_eval(cfg)  # main() turns a TaskError into exit status 2
    assert not (tmp_path / "suite").exists()  # refused before the synthetic suite would be generated


def test_cli_missing_tokenizer_corpus_file_exits_2(suite, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *small(suite, tmp_path / "run"),
                           f"model.tokenizer.corpus=[{tmp_path / 'nope.json'}]"], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "tokenizer corpus file" in proc.stderr and "nope.json does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
