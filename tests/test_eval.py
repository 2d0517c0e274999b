"""eval.py and the generation loop (mixlora.tasks.evaluate): the predictions file and resume, batched generation,
and eval.py end to end, in this process and as real processes.

References are independent of the code under test: a plain greedy ``model.generate`` call on hand-built ids and
prompts written out as literal template strings, an uninterrupted run for each resumed one, and the official
scorers' CLI run on the written files. The task modules are tested in test_tasks.py, the lmms-eval plugin in
test_lmms_plugin.py; the shared setup is in eval_setup.py.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from eval_setup import (ROOT, SHORT, VICUNA_SYSTEM, _env, compose_eval,  # noqa: F401  (stack, suite: fixtures)
                        load_eval_script, stack, suite, tiny_mixlora_stack)
from mixlora import AdapterConfig, MixLoRALinear
from mixlora.build import load_run, save_run
from mixlora.scoring.score import main as score_cli
from mixlora.tasks.evaluate import Decoding, evaluate_task, generate_answers, set_decode_routing
from mixlora.tasks import mme, pope, textvqa
from mixlora.tasks.common import TaskError
from mixlora.tasks.predictions import PredictionFile


GREEDY = Decoding(max_new_tokens=3)


# ---------------------------------------------------------------- predictions file and resume


def test_prediction_file_torn_line_bad_line_and_settings(tmp_path):
    store = PredictionFile(tmp_path, {"a": 1})
    store.append([{"uid": "1", "prediction": "x"}, {"uid": "2", "prediction": "y"}])
    with open(store.path, "a") as f:
        f.write('{"uid": "3", "predic')  # killed mid-write
    assert sorted(PredictionFile(tmp_path, {"a": 1}).load()) == ["1", "2"]
    assert store.path.read_text().endswith('"y"}\n')  # the torn tail is gone, the file is appendable again
    with pytest.raises(TaskError, match=r"other settings \(a: 1 -> 2\).*overwrite=true"):
        PredictionFile(tmp_path, {"a": 2})
    assert PredictionFile(tmp_path, {"a": 2}, overwrite=True).load() == {}
    store = PredictionFile(tmp_path, {"a": 2})
    store.path.write_text('{"uid": "1", "prediction": "x"}\nnot json\n{"uid": "2", "prediction": "y"}\n')
    with pytest.raises(TaskError, match=r"predictions.jsonl line 2: not a JSON object"):
        store.load()


def test_resume_skips_finished_samples_and_matches_an_uninterrupted_run(stack, suite, tmp_path):
    task = textvqa.TextVQATask(str(suite / "eval/textvqa/test.jsonl"))
    calls = []
    generate = stack.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 2 and crash["now"]:
            raise KeyboardInterrupt("killed")  # dies in the second batch, after the first was written
        return generate(*args, **kwargs)

    crash = {"now": True}
    stack.model.generate = counting
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate_task(stack, task, tmp_path / "a", GREEDY, batch_size=2, limit=5, progress=False)
        lines = (tmp_path / "a/eval/textvqa/predictions.jsonl").read_text().splitlines()
        assert len(lines) == 2 and calls == [2, 2]
        first = json.loads(lines[0])
        first["prediction"] = "MARKER"  # a pre-filled answer must be kept, not regenerated
        (tmp_path / "a/eval/textvqa/predictions.jsonl").write_text(json.dumps(first) + "\n" + lines[1] + "\n")
        crash["now"], calls[:] = False, []
        metrics = evaluate_task(stack, task, tmp_path / "a", GREEDY, batch_size=2, limit=5, progress=False)
        assert calls == [2, 1] and metrics["reused"] == 2 and metrics["generated"] == 3
        calls[:] = []
        fresh = evaluate_task(stack, task, tmp_path / "b", GREEDY, batch_size=2, limit=5, progress=False)
        assert calls == [2, 2, 1]
        again = evaluate_task(stack, task, tmp_path / "a", GREEDY, batch_size=2, limit=5, progress=False)
        assert calls == [2, 2, 1] and again["generated"] == 0  # nothing left to generate
    finally:
        stack.model.generate = generate
    resumed = [json.loads(x) for x in (tmp_path / "a/eval/textvqa/predictions.jsonl").read_text().splitlines()]
    uninterrupted = [json.loads(x) for x in (tmp_path / "b/eval/textvqa/predictions.jsonl").read_text().splitlines()]
    assert resumed[0]["prediction"] == "MARKER"
    assert [r["prediction"] for r in resumed[1:]] == [r["prediction"] for r in uninterrupted[1:]]
    assert fresh["samples"] == metrics["samples"] == 5
    with pytest.raises(TaskError, match=r"other settings \(decoding.template: 'vicuna_v1' -> 'llava_v1'\)"):
        evaluate_task(stack, task, tmp_path / "a", Decoding(template="llava_v1", max_new_tokens=3), batch_size=2,
                      limit=5, progress=False)


# ---------------------------------------------------------------- generation against a hand-built reference


def test_batched_generation_equals_plain_greedy_generate_on_literal_prompts(stack, suite):
    task = textvqa.TextVQATask(str(suite / "eval/textvqa/test.jsonl"))
    examples = task.examples(limit=3)
    got = [text for batch in generate_answers(stack, examples, GREEDY, 3, batch_size=3) for _, text in batch]
    tok, model = stack.tokenizer, stack.model
    image_id = tok.convert_tokens_to_ids("<image>")
    for ex, text in zip(examples, got):
        literal = f"{VICUNA_SYSTEM} USER: <image>\n{ex.record['prompt']}\n{SHORT} ASSISTANT:"
        ids = [tok.bos_token_id] + tok(literal, add_special_tokens=False)["input_ids"]
        k = ids.index(image_id)
        ids = torch.tensor([ids[:k] + [image_id] * model.num_image_tokens + ids[k + 1:]])
        pixels = stack.image_processor(Image.open(ex.image)).unsqueeze(0)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                             max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(out[0], skip_special_tokens=True).strip()


def test_released_decoding_config_and_sampling_is_seeded(stack, suite):
    cfg = compose_eval(["run=null", "decoding=released"])
    decoding = Decoding.coerce(cfg.decoding)
    assert (decoding.template, decoding.do_sample, decoding.temperature, decoding.max_new_tokens, decoding.prompts) \
        == ("llava_v1", True, 0.2, 1024, "as_is")
    task = mme.MMETask(str(suite / "eval/mme"), subtasks=["color"])
    examples = task.examples(prompts="as_is")
    assert examples[0].question.endswith("Please answer yes or no.")
    short = Decoding(template="llava_v1", do_sample=True, temperature=0.2, max_new_tokens=4, prompts="as_is")
    draw = [[t for b in generate_answers(stack, examples, short, 4, batch_size=2) for _, t in b] for _ in range(2)]
    assert draw[0] == draw[1]  # same seed, same draws
    with pytest.raises(ValueError, match="temperature=0 must be > 0"):
        Decoding(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="unknown decoding key"):
        Decoding.coerce({"temprature": 0.2})


# ---------------------------------------------------------------- eval.py end to end


def test_eval_py_base_model_end_to_end_and_cli_rescoring(suite, tmp_path, capsys):
    script = load_eval_script()
    out = tmp_path / "out"
    cfg = compose_eval(["run=null", "model=tiny", f"data_root={suite}", f"output_dir={out}", "limit=2",
                        "decoding.max_new_tokens=2", "batch_size=4", "progress=false",
                        f"tokenizer_cache={tmp_path / 'tok'}", "tasks=[mme,cvbench,pope,textvqa,vsr,snli_ve,cifar10,"
                        "cifar100,mnist,seen]"])
    summary = script.run_eval(cfg)
    tasks = ["mme", "cvbench", "pope", "textvqa", "vsr", "snli_ve", "cifar10", "cifar100", "mnist", "seen"]
    assert list(summary["tasks"]) == tasks
    for name in tasks:
        for f in ("predictions.jsonl", "settings.json", "metrics.json"):
            assert (out / "eval" / name / f).is_file(), (name, f)
    assert (out / "eval/results.md").read_text().count("\n| ") == 12  # header, 10 tasks, MMAvg
    assert summary["partial"] and summary["limit"] == 2
    seven = tasks[2:9]  # MMAvg's sets: not MME, CV-Bench or the seen tasks
    assert sorted(summary["mmavg"]["sets"]) == sorted(seven) and not summary["mmavg"]["partial"]
    expected = sum(summary["tasks"][t]["headline"]["f1" if t == "pope" else "accuracy"] for t in seven) / 7
    assert summary["mmavg"]["mmavg"] == pytest.approx(expected)
    assert json.loads((out / "eval/metrics.json").read_text()) == json.loads(json.dumps(summary))
    # 7 synthetic MME subtasks x 1 image x 2 questions; every image's two questions on consecutive lines.
    tool = sorted(p.stem for p in (out / "eval/mme/eval_tool").glob("*.txt"))
    assert tool == ["OCR", "color", "count", "existence", "numerical_calculation", "position", "scene"]

    def cli(*argv):
        capsys.readouterr()
        assert score_cli(list(map(str, argv))) == 0
        return json.loads(capsys.readouterr().out)

    def stored(name):
        return json.loads((out / "eval" / name / "metrics.json").read_text())["scores"]

    ev = out / "eval"
    assert cli("mme", ev / "mme/eval_tool") == stored("mme")
    assert cli("cvbench", ev / "cvbench/predictions.jsonl") == stored("cvbench")
    assert cli("pope", ev / "pope/predictions.jsonl") == stored("pope")
    assert cli("textvqa", ev / "textvqa/predictions.jsonl") == stored("textvqa")
    for name in ("vsr", "snli_ve", "cifar10", "cifar100", "mnist"):
        scores = stored(name)
        assert cli("classification", ev / name / "predictions.jsonl", "--task", name, "--labels",
                   *scores["labels"]) == scores
    record = json.loads((ev / "cifar10/predictions.jsonl").read_text().splitlines()[0])
    assert record["asked"].endswith(SHORT) and record["uid"] == "cifar10-00000" and "target" in record


def test_eval_of_a_saved_run_directory(suite, tmp_path):
    script = load_eval_script()
    # a "trained" adapter: its random B changes the answers
    cfg_model, stack = tiny_mixlora_stack(suite, AdapterConfig(num_factors=4, rank=2, decode_routing="prefill"))
    run = save_run(tmp_path / "run", stack, OmegaConf.create({"model": cfg_model}))
    cfg = compose_eval([f"run={run}", f"data_root={suite}", "tasks=[pope]", "limit=1", "decoding.max_new_tokens=3",
                        "progress=false"])
    summary = script.run_eval(cfg)
    assert summary["source"]["adapter"] == "mixlora E=4 r=2 decode_routing=prefill"
    written = [json.loads(x) for x in (run / "eval/pope/predictions.jsonl").read_text().splitlines()]
    assert len(written) == 3 and (run / "eval/results.md").is_file()
    loaded, _ = load_run(run)
    loaded.model.eval()
    task = pope.POPETask(OmegaConf.to_container(cfg.task.pope.splits, resolve=True))
    reference = [t for b in generate_answers(loaded, task.examples(limit=1), GREEDY, 3, batch_size=1) for _, t in b]
    assert [r["prediction"] for r in written] == reference
    # A run moved elsewhere (another machine, a shared folder) resumes its evaluation: the settings name the
    # weights, not the path.
    moved = tmp_path / "moved/run"
    shutil.move(str(run), str(moved))
    cfg = compose_eval([f"run={moved}", f"data_root={suite}", "tasks=[pope]", "limit=2", "decoding.max_new_tokens=3",
                        "progress=false"])
    script.run_eval(cfg)
    again = [json.loads(x) for x in (moved / "eval/pope/predictions.jsonl").read_text().splitlines()]
    assert again[:3] == written and len(again) == 6  # limit=2: two examples per split, the first three kept
    assert set_decode_routing(loaded.model, "per_step") == len(
        [m for m in loaded.model.modules() if isinstance(m, MixLoRALinear)]) > 0
    with pytest.raises(ValueError, match="decode_routing='sometimes' is not a valid option"):
        set_decode_routing(loaded.model, "sometimes")


def test_eval_config_errors_and_synthetic_generation(tmp_path):
    script = load_eval_script()
    with pytest.raises(ValueError, match=r"tasks lists 'mmbench', but there is no task config"):
        script.build_tasks(compose_eval(["run=null", "tasks=[mmbench]"]))
    root = tmp_path / "suite"
    assert script.ensure_synthetic_suite(root, seed=0, per_task=1, eval_per_task=6, mme_images=1, stage1_size=0,
                                         progress=False)
    assert (root / "manifest.json").is_file() and (root / "eval/pope/random.jsonl").is_file()
    assert not script.ensure_synthetic_suite(root)  # present: left alone
    assert [p.name for p in tmp_path.iterdir()] == ["suite"]  # no temporary folder left behind
    half = tmp_path / "half"
    (half / "eval").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="holds no manifest.json"):
        script.ensure_synthetic_suite(half)
    cfg = compose_eval(["run=null", f"data_root={root}", "tasks=[mme]", "task.mme.path=/elsewhere"])
    assert script.needs_synthetic(cfg)  # the base model's tokenizer corpus is in the suite
    cfg = compose_eval([f"run={tmp_path}", f"data_root={root}", "tasks=[mme]", "task.mme.path=/elsewhere"])
    assert not script.needs_synthetic(cfg)


# ---------------------------------------------------------------- real processes


def test_eval_py_batch_log_gets_a_plain_line_per_interval(suite, tmp_path):
    """stdout and stderr are pipes, as under a batch system: progress=auto writes plain lines (here after every
    batch, progress_every_s=0) instead of a bar; a bad progress value stops before any work."""
    import re
    import subprocess

    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "eval.py"), "run=null", "model=tiny", f"data_root={suite}",
               f"output_dir={out}", "tasks=[pope]", "limit=1", "batch_size=2", "decoding.max_new_tokens=2",
               f"tokenizer_cache={tmp_path / 'tok'}", "progress_every_s=0"]
    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr  # no bar redraws
    pattern = r"(pope): (\d+)/(\d+) examples \| (\d+\.\d) ex/s \| ETA (\S+)$"
    lines = [m for m in (re.search(pattern, line) for line in proc.stdout.splitlines()) if m]
    # POPE at limit=1: one question per split (3), in batches of 2 -> a line after 2, then after 3
    assert [(int(m[2]), int(m[3])) for m in lines] == [(2, 3), (3, 3)]
    assert re.fullmatch(r"\d+:\d\d:\d\d", lines[0][5]) and lines[1][5] == "0:00:00"
    script = load_eval_script()
    for extra, message in (("progress=sometimes", r"progress='sometimes' is not a valid option"),
                           ("progress_every_s=-1", r"progress_every_s=-1 must be a number of seconds >= 0")):
        with pytest.raises(TaskError, match=message):  # eval.py prints it and exits with status 2
            script.run_eval(compose_eval([*command[2:], extra, f"output_dir={tmp_path / 'bad'}"]))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # two eval.py processes (~6-15 s of imports each); the in-process resume test runs by default
def test_eval_py_killed_mid_task_resumes_where_it_stopped(suite, tmp_path):
    import subprocess
    import time

    out = tmp_path / "out"
    overrides = ["run=null", "model=tiny", f"data_root={suite}", f"output_dir={out}", "tasks=[mme]", "batch_size=1",
                 "task.mme.subtasks=[color,count,scene]", "decoding.max_new_tokens=32",
                 f"tokenizer_cache={tmp_path / 'tok'}", "progress=false"]
    command = [sys.executable, str(ROOT / "eval.py"), *overrides]
    preds = out / "eval/mme/predictions.jsonl"
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if preds.is_file() and preds.read_text().count("\n") >= 2:
            proc.kill()  # SIGKILL: no clean-up code runs
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -9, proc.stderr.read().decode()[-2000:]
    done = len(preds.read_text().splitlines())
    assert 2 <= done < 12  # 3 subtasks x 2 images x 2 questions
    finished = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "| mme (partial) | 12 |" in finished.stdout  # the results table is printed
    metrics = json.loads((out / "eval/mme/metrics.json").read_text())
    assert (metrics["reused"], metrics["generated"], metrics["samples"]) == (done, 12 - done, 12)
    reference = load_eval_script().run_eval(compose_eval([o.replace(str(out), str(tmp_path / "ref"))
                                                          for o in overrides]))
    assert reference["tasks"]["mme"]["samples"] == 12
    resumed = [json.loads(x) for x in preds.read_text().splitlines()]
    uninterrupted = [json.loads(x) for x in (tmp_path / "ref/eval/mme/predictions.jsonl").read_text().splitlines()]
    assert resumed == uninterrupted


def test_second_eval_py_on_the_same_output_exits_2_and_writes_nothing(suite, tmp_path):
    """While another process evaluates OUT, eval.py on OUT stops with exit 2 before writing any prediction."""
    import os
    import subprocess

    from mixlora.runlock import run_lock

    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "eval.py"), "run=null", "model=tiny", f"data_root={suite}",
               f"output_dir={out}", "tasks=[pope]", "limit=1", f"tokenizer_cache={tmp_path / 'tok'}", "progress=false"]
    with run_lock(out / "eval", what="eval"):  # this test process is the first evaluation of OUT
        second = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr and second.stdout == ""
    assert f"error: {out / 'eval'} is in use by another process (pid {os.getpid()}: eval:" in second.stderr
    assert "Wait for it to finish, or choose another output folder" in second.stderr
    assert not (out / "eval/pope").exists()


def test_eval_of_a_missing_run_directory_creates_nothing(suite, tmp_path):
    missing = tmp_path / "no_such_run"
    cfg = compose_eval([f"run={missing}", f"data_root={suite}", "tasks=[pope]", "limit=1", "progress=false"])
    with pytest.raises(FileNotFoundError, match=rf"run={missing}: no such directory"):
        load_eval_script().run_eval(cfg)
    assert not missing.exists()  # the output lock (RUN/eval/.lock) must not conjure up a run folder
