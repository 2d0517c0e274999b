"""Task interference and routing analysis (docs/method.md#task-interference, docs/method.md#routing-analysis).

References are independent of the code under test: interference values derived by hand from the formula,
Jaccard distances and usage counts of hand-made selection sets, parameter counts from the tiny model's shapes,
gradients recomputed with a plain ``loss.backward()``, and the public formats of the synthetic held-out sets.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixlora import last_selections
from mixlora.analysis import (adapter_config, fresh_stack, heldout_prompts, load_manifest,
                              randomize_lora_b, resolve_layers, sample_per_task)
from mixlora.analysis.interference import (collect_gradients, interference_matrix, interference_on_records,
                                           parameter_groups)
from mixlora.analysis.routing import (Selections, factor_usage, jaccard_distances, mean_selection_set,
                                      nearest_training_tasks, pair_heldout, selection_indicator, usage_entropy)

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["SynthShapes+color_name", "SynthCount+count_digits"]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("suite")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=2, stage1_size=0, progress=False)
    return out


# ---------------------------------------------------------------------------------------------- interference formula
# Hand example, 2 tasks in R²: task A gradients u1 = (3, 4), u2 = (1, 0); task B gradients v1 = (0, -2), v2 = (-1, 0).
# Unit directions: û1 = (.6, .8), û2 = (1, 0), v̂1 = (0, -1), v̂2 = (-1, 0).
#   x = u1: Δ_A = mean(u1·û1, u1·û2) = mean(5, 3) = 4;     Δ_B = mean(u1·v̂1, u1·v̂2) = mean(-4, -3) = -3.5 -> -0.875
#   x = u2: Δ_A = mean(.6, 1) = .8;                         Δ_B = mean(0, -1) = -.5                     -> -0.625
#   I_AB = mean(-0.875, -0.625) = -0.75
#   x = v1: Δ_B = mean(2, 0) = 1;                           Δ_A = mean(-1.6, 0) = -.8                   -> -0.8
#   x = v2: Δ_B = mean(0, 1) = .5;                          Δ_A = mean(-.6, -1) = -.8                   -> -1.6
#   I_BA = mean(-0.8, -1.6) = -1.2
HAND_GRADS = [[3.0, 4.0], [1.0, 0.0], [0.0, -2.0], [-1.0, 0.0]]


def test_interference_hand_example_with_self_pairs():
    result = interference_matrix(torch.tensor(HAND_GRADS), ["A", "A", "B", "B"])
    assert result.tasks == ["A", "B"] and result.samples == [2, 2]
    np.testing.assert_allclose(result.values, [[1.0, -0.75], [-1.2, 1.0]], rtol=0, atol=1e-12)
    assert result.nonpositive_self == [0, 0]
    # Row/column order follows `tasks`; labels may be interleaved.
    swapped = interference_matrix(np.array(HAND_GRADS)[[2, 0, 3, 1]], ["B", "A", "B", "A"], tasks=["B", "A"])
    np.testing.assert_allclose(swapped.values, [[1.0, -1.2], [-0.75, 1.0]], atol=1e-12)


def test_interference_hand_example_without_self_pairs():
    # Task A: u1 = (3, 4), u2 = (1, 0); task B: w1 = (0, 2), w2 = (1, 1); ŵ1 = (0, 1), ŵ2 = (1, 1)/√2.
    #   u1: Δ_A = u1·û2 = 3 (itself left out), Δ_B = mean(4, 7/√2)  -> (4 + 7/√2) / 6
    #   u2: Δ_A = u2·û1 = .6,                   Δ_B = mean(0, 1/√2)  -> (1/√2) / 1.2
    #   w1: Δ_B = w1·ŵ2 = √2,                   Δ_A = mean(1.6, 0)   -> .8 / √2
    #   w2: Δ_B = w2·ŵ1 = 1,                    Δ_A = mean(1.4, 1)   -> 1.2
    s = math.sqrt(2)
    i_ab = ((4 + 7 / s) / 6 + (1 / s) / 1.2) / 2
    i_ba = (0.8 / s + 1.2) / 2
    result = interference_matrix([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], ["A", "A", "B", "B"],
                                 self_pairs="exclude")
    np.testing.assert_allclose(result.values, [[1.0, i_ab], [i_ba, 1.0]], atol=1e-12)


def test_interference_sign_and_scale():
    """Task B's gradients are task A's times c: directions flip with the sign of c and the norm cancels, so
    I_AB = I_BA = sign(c) whatever the samples."""
    g = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    labels = ["A"] * 5 + ["B"] * 5
    for c, expected in ((-3.0, -1.0), (5.0, 1.0)):
        result = interference_matrix(torch.cat([g, c * g]), labels)
        np.testing.assert_allclose(result.values, [[1.0, expected], [expected, 1.0]], atol=1e-12)
    # Orthogonal tasks do not interact at all.
    ortho = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    np.testing.assert_allclose(interference_matrix(ortho, ["A", "A", "B", "B"]).values, np.eye(2), atol=1e-12)


def test_interference_errors():
    with pytest.raises(ValueError, match="B = 0"):
        interference_matrix([[0.0, 0.0], [1.0, 0.0]], ["A", "B"])
    with pytest.raises(ValueError, match="single gradient"):
        interference_matrix([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], ["A", "B", "B"], self_pairs="exclude")
    with pytest.raises(ValueError, match="self_pairs='both'"):
        interference_matrix([[1.0, 0.0]], ["A"], self_pairs="both")
    with pytest.raises(ValueError, match="labels and tasks disagree"):
        interference_matrix([[1.0, 0.0], [0.0, 1.0]], ["A", "B"], tasks=["A", "C"])


# ---------------------------------------------------------------------------------------------- routing math
def test_jaccard_distances_hand():
    sets = [{0, 1}, {1, 2}, {0, 1}, set(), {3}]
    x = np.zeros((5, 4), dtype=bool)
    for k, s in enumerate(sets):
        x[k, list(s)] = True
    d = jaccard_distances(x)
    assert d[0, 1] == pytest.approx(2 / 3)  # |{1}| / |{0,1,2}|
    assert d[0, 2] == 0 and d[0, 4] == 1 and d[1, 4] == 1
    assert d[3, 3] == 0 and d[0, 3] == 1  # empty vs empty = 0, empty vs non-empty = 1
    np.testing.assert_allclose(d, d.T)


def test_factor_usage_and_entropy_hand():
    idx = torch.tensor([[0, 1], [1, 2], [0, 1], [3, 1]])
    counts = factor_usage(idx, ["a", "a", "b", "b"], ["a", "b"], num_factors=4)
    np.testing.assert_array_equal(counts, [[1, 2, 1, 0], [1, 2, 0, 1]])
    # a: p = (.25, .5, .25, 0) -> H = 2 · .25 ln 4 + .5 ln 2 = 1.5 ln 2; uniform over E = 4 -> ln 4; one-hot -> 0
    np.testing.assert_allclose(usage_entropy(counts), [1.5 * math.log(2)] * 2)
    np.testing.assert_allclose(usage_entropy(np.array([[3, 3, 3, 3], [0, 5, 0, 0]])), [math.log(4), 0.0])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        factor_usage(torch.tensor([[0, 4]]), ["a"], ["a"], num_factors=4)


def _selections():
    # Two modules at layer 0 and one at layer 1, E = 4, r = 2; instance 1 differs from 0 only in layer-0 q's B pool.
    q, v, q1 = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj"
    idx_a = {q: torch.tensor([[0, 1], [0, 1]]), v: torch.tensor([[2, 3], [2, 3]]), q1: torch.tensor([[0, 1], [2, 3]])}
    idx_b = {q: torch.tensor([[0, 1], [2, 3]]), v: torch.tensor([[0, 1], [0, 1]]), q1: torch.tensor([[0, 1], [0, 1]])}
    return Selections(tasks=["t", "h"], idx_a=idx_a, idx_b=idx_b, num_factors={q: 4, v: 4, q1: 4})


def test_selection_sets_tag_pools_and_modules():
    sel = _selections()
    x = selection_indicator(sel, [0], "ab")
    assert x.shape == (2, 2 * 2 * 4) and x.sum(axis=1).tolist() == [8, 8]  # r · modules · pools
    # Layer 0: A sets equal, B sets of q disjoint: |∩| = 6 of |∪| = 10 tagged elements.
    assert jaccard_distances(x)[0, 1] == pytest.approx(1 - 6 / 10)
    assert jaccard_distances(selection_indicator(sel, [0], "a"))[0, 1] == 0
    assert jaccard_distances(selection_indicator(sel, [0], "b"))[0, 1] == pytest.approx(1 - 2 / 6)
    # Both layers: layer 1 adds 2 shared B elements and 4 A elements that differ: |∩| = 8, |∪| = 16.
    assert jaccard_distances(selection_indicator(sel, [0, 1], "ab"))[0, 1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="layer 5 holds no MixLoRA"):
        selection_indicator(sel, [5])


def test_nearest_training_task_hand():
    # t1: {0,1}, {0,1}, {0,2} -> mean set (chosen by >= half) {0,1}; t2: {2,3}, {2,3} -> {2,3}; h: {0,1}, {1,3}.
    sets = {"t1": [{0, 1}, {0, 1}, {0, 2}], "t2": [{2, 3}, {2, 3}], "h": [{0, 1}, {1, 3}]}
    labels, rows = [], []
    for task, ss in sets.items():
        for s in ss:
            labels.append(task)
            rows.append([e in s for e in range(4)])
    x = np.array(rows)
    # centroid: d(h, t1) = mean(0, 2/3) = 1/3; d(h, t2) = mean(1, 2/3) = 5/6.
    res = nearest_training_tasks(x, labels, ["h"], ["t1", "t2"], closest={"h": ["t2"]})["h"]
    assert res["nearest"] == "t1" and res["distance"] == pytest.approx(1 / 3)
    assert res["distances"]["t2"] == pytest.approx(5 / 6)
    assert res["nearest_in_closest"] is False and res["closest_rank"] == 2
    # average linkage: d(h, t1) = (0 + 0 + 2/3 + 2/3 + 2/3 + 1) / 6 = 1/2; d(h, t2) = (1 + 1 + 2/3 + 2/3) / 4 = 5/6.
    avg = nearest_training_tasks(x, labels, ["h"], ["t1", "t2"], linkage="average")["h"]
    assert avg["distance"] == pytest.approx(0.5) and avg["distances"]["t2"] == pytest.approx(5 / 6)
    assert avg["closest_rank"] is None
    # Elements chosen by exactly half of the instances belong to the mean set: {0,1}, {0,2} -> {0,1,2}.
    assert mean_selection_set(np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)).tolist() == [True, True, True, False]


def test_pair_heldout_prefers_unused_training_tasks():
    pairs = pair_heldout({"pope": ["x", "y"], "vsr": ["x", "z"], "mnist": ["w"], "snli": ["absent", "x"]},
                         ["x", "y", "z"])
    assert pairs == {"pope": "x", "vsr": "z", "mnist": None, "snli": "x"}


# ---------------------------------------------------------------------------------------------- inputs
def test_sampling_and_layer_specs():
    records = [{"task_name": "a"}] * 5 + [{"task_name": "b"}] * 2
    picked = sample_per_task(records, ["a", "b"], n=3, seed=1)
    assert len(picked["a"]) == 3 and set(picked["a"]) <= set(range(5)) and picked["b"] == [5, 6]
    assert sample_per_task(records, ["a"], n=3, seed=1) == {"a": picked["a"]}  # per-task streams
    with pytest.raises(ValueError, match=r"task\(s\) \['c'\] not found"):
        sample_per_task(records, ["a", "c"], n=1)
    with pytest.raises(ValueError, match="record 0 has no 'task_name'"):
        sample_per_task([{}], ["a"], n=1)
    assert resolve_layers("0,-1", range(32)) == [0, 31] and resolve_layers(None, range(32)) == [0, 15, 31]
    with pytest.raises(ValueError, match="holds no adapter"):
        resolve_layers("3", [0, 1])


def test_heldout_prompts_follow_the_public_formats(suite):
    manifest = load_manifest(suite)
    cifar, closest = heldout_prompts(suite, "cifar10", manifest)
    assert len(cifar) == 6 and closest == manifest["eval"]["cifar10"]["closest_training_tasks"]
    mme, _ = heldout_prompts(suite, "mme/count", manifest)
    assert len(mme) == 2 * 2  # two questions per MME image
    assert all(p["prompt"].endswith("Please answer yes or no.") for p in mme)
    scene, _ = heldout_prompts(suite, "mme/scene", manifest)  # the release's nested layout
    cv, _ = heldout_prompts(suite, "cvbench/Depth", manifest)
    pope, _ = heldout_prompts(suite, "pope/adversarial", manifest)
    assert len(scene) == 4 and len(cv) == 6 and len(pope) == 6
    assert all(Path(p["image_path"]).is_file() for p in cifar + mme + scene + cv + pope)
    with pytest.raises(ValueError, match="'nope' is not in"):
        heldout_prompts(suite, "nope", manifest)


# ---------------------------------------------------------------------------------------------- model drivers
@pytest.fixture(scope="module")
def stacks(suite):
    out = {}
    for kind in ("lora", "mixlora"):
        stack = fresh_stack("tiny", adapter_config(kind, rank=2, num_factors=4), [suite / "train.json"])
        randomize_lora_b(stack.model.llm, 0.05, seed=0)
        out[kind] = stack
    return out


# Tiny Llama: hidden 128, SwiGLU 384. Per rank-one factor: gate/up A 128 + down A 384; gate/up B 384 + down B 128;
# q/k/v/o A and B 128 each. LoRA r = 2 holds 2 factors per module, MixLoRA E = 4 holds 4.
PARAMS_PER_FACTOR = {("mlp", "A"): 128 + 128 + 384, ("mlp", "B"): 384 + 384 + 128, ("attn", "A"): 4 * 128,
                     ("attn", "B"): 4 * 128}


@pytest.mark.parametrize("kind, factors", [("lora", 2), ("mixlora", 4)])
def test_driver_on_tiny_stack(stacks, suite, kind, factors):
    stack = stacks[kind]
    report = interference_on_records(stack, suite / "train.json", TASKS, "0", n=2, seed=0, progress=False)
    assert set(report.matrices) == {(0, t, p) for t in ("mlp", "attn") for p in ("A", "B")}
    for (layer, kind_, part), m in report.matrices.items():
        assert m.values.shape == (2, 2) and np.isfinite(m.values).all()
        np.testing.assert_allclose(np.diag(m.values), 1.0, atol=1e-12)
        assert report.num_params[(layer, kind_, part)] == factors * PARAMS_PER_FACTOR[(kind_, part)]
    js = json.loads(json.dumps(report.to_json()))
    assert js["tasks"] == TASKS and sorted(js["samples"]) == sorted(TASKS)
    assert all(len(v) == 2 for v in js["samples"].values())


def test_gradients_match_plain_backward_and_mixlora_rows(stacks, suite):
    """collect_gradients == loss.backward() inside the routing context; for MixLoRA only the rows of the factors
    the instance selected carry gradient; requires_grad is restored."""
    from mixlora.data.collator import TrainingCollator
    from mixlora.data.dataset import ConversationDataset

    stack = stacks["mixlora"]
    model = stack.model
    ds = ConversationDataset(str(suite / "train.json"), stack.tokenizer, stack.image_processor,
                             model.num_image_tokens, image_folder=str(suite / "images"))
    batch = TrainingCollator(stack.tokenizer.pad_token_id)([ds[0]])
    groups = parameter_groups(model.llm, [1], ["mlp"], ["A"])
    named = groups[(1, "mlp", "A")]
    flags = {id(p): p.requires_grad for _, p in named}
    grads, labels = collect_gradients(model, [(batch["task_name"][0], batch)], groups, progress=False)

    model.zero_grad(set_to_none=True)
    with model.routing(batch["routing_mask"]):
        model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}).loss.backward()
        selected = last_selections(model.llm)
    reference = torch.cat([p.grad.reshape(-1) for _, p in named])
    torch.testing.assert_close(grads[(1, "mlp", "A")][0], reference)
    assert {id(p): p.requires_grad for _, p in named} == flags
    for name, p in named:
        module = name.rsplit(".", 1)[0]
        chosen = set(selected[module][0][0].tolist())  # idx_a of instance 0
        nonzero = set((p.grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist())
        assert nonzero == chosen and len(chosen) == 2
    model.zero_grad(set_to_none=True)


def test_fresh_b_zero_gives_clear_error(suite):
    stack = fresh_stack("tiny", adapter_config("lora", rank=2), [suite / "train.json"])
    with pytest.raises(ValueError, match="B = 0"):
        interference_on_records(stack, suite / "train.json", TASKS, "0", n=2, parts=["A"], module_types=["mlp"],
                                progress=False)


def test_batched_selections_equal_single_instance_selections(stacks, suite):
    """Per-instance routing on the prompt: an instance selects the same factors alone and in a left-padded batch."""
    from mixlora.analysis.routing import collect_selections
    from mixlora.data.collator import GenerationCollator
    from mixlora.data.dataset import PromptDataset

    stack = stacks["mixlora"]
    ds = PromptDataset(str(suite / "eval/vsr/test.jsonl"), stack.tokenizer, stack.image_processor,
                       stack.model.num_image_tokens)
    collate = GenerationCollator(stack.tokenizer.pad_token_id)
    items = [ds[0], ds[3], ds[4]]
    assert len({len(it["input_ids"]) for it in items}) > 1  # padding really happens
    together = collect_selections(stack.model, [collate(items)], progress=False)
    alone = collect_selections(stack.model, [collate([it]) for it in items], progress=False)
    assert len(together.idx_a) == 14  # 7 projections x 2 layers
    assert any(not torch.equal(idx[0], idx[1]) for idx in together.idx_a.values())  # instances route differently
    for module in together.idx_a:
        assert torch.equal(together.idx_a[module], alone.idx_a[module])
        assert torch.equal(together.idx_b[module], alone.idx_b[module])


# ---------------------------------------------------------------------------------------------- scripts end to end
def test_interference_script(suite, tmp_path, capsys):
    out = tmp_path / "interference"
    result = _script("interference").main([
        "--model", "tiny", "--adapter", "lora", "--rank", "2", "--data", str(suite / "train.json"),
        "--tasks", ",".join(TASKS), "--layers", "-1", "--n", "2", "--out", str(out), "--no-progress"])
    assert "B of 14 adapter modules" in capsys.readouterr().out
    saved = json.loads((out / "interference.json").read_text())
    assert saved == json.loads(json.dumps(result)) and list(saved["matrices"]) == ["1"]
    assert saved["info"]["adapter"]["kind"] == "lora" and saved["info"]["b_init_std"] == 0.02
    for kind in ("mlp", "attn"):
        for part in ("A", "B"):
            values = np.array(saved["matrices"]["1"][kind][part]["values"])
            assert np.isfinite(values).all() and np.allclose(np.diag(values), 1.0)
        with Image.open(out / f"interference_{kind}.png") as im:
            assert im.format == "PNG" and im.size[0] > 200


def test_interference_script_on_a_run_directory(stacks, suite, tmp_path):
    """--run reloads the saved adapter (B untouched) and measures the same matrices as the in-memory model."""
    from omegaconf import OmegaConf

    from mixlora.build import save_run

    stack = stacks["mixlora"]
    config = OmegaConf.create({"model": OmegaConf.load(ROOT / "configs/model/tiny.yaml")})
    run = save_run(tmp_path / "run", stack, config)
    saved = _script("interference").main([
        "--run", str(run), "--data", str(suite / "train.json"), "--tasks", ",".join(TASKS), "--layers", "0",
        "--module-types", "attn", "--parts", "B", "--n", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    assert saved["info"]["b_init_std"] == 0.0 and saved["info"]["adapter"]["kind"] == "mixlora"
    assert list(saved["matrices"]["0"]) == ["attn"] and list(saved["matrices"]["0"]["attn"]) == ["B"]
    direct = interference_on_records(stack, suite / "train.json", TASKS, [0], n=2, module_types=["attn"], parts=["B"],
                                     progress=False)
    np.testing.assert_allclose(saved["matrices"]["0"]["attn"]["B"]["values"], direct.matrices[(0, "attn", "B")].values,
                               rtol=1e-5, atol=1e-6)


def test_routing_script(suite, tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the t-SNE needs scikit-learn (requirements.txt)")
    out = tmp_path / "routing"
    result = _script("routing_analysis").main([
        "--model", "tiny", "--num-factors", "4", "--rank", "2", "--data", str(suite / "train.json"),
        "--heldout", "cifar10,mme/count", "--n", "3", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert "nearest training task" in printed and "mme/count" in printed
    usage = json.loads((out / "usage.json").read_text())
    manifest = load_manifest(suite)
    expected_train = list(dict.fromkeys(manifest["eval"]["cifar10"]["closest_training_tasks"]
                                        + manifest["eval"]["mme"]["subtasks"]["count"]["closest_training_tasks"]))
    assert usage["tasks"] == expected_train + ["cifar10", "mme/count"]
    assert usage["layers"] == [0, 1]  # first, middle and last of 2 adapted layers
    for module, entry in usage["modules"].items():
        for part in ("A", "B"):
            for task, counts in entry[part]["counts"].items():
                assert sum(counts) == 2 * usage["instances"][task]  # r selections per instance
    nearest = json.loads((out / "nearest.json").read_text())
    assert set(nearest["layers"]) == {"0", "1", "all"}
    assert nearest["layers"]["0"]["cifar10"]["nearest"] in expected_train
    points = json.loads((out / "tsne_layer1.json").read_text())["points"]
    assert len(points) == sum(usage["instances"].values())
    for name in ("usage_layer0.png", "usage_layer1.png", "usage_entropy.png", "tsne_layer0.png", "tsne_layer1.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    assert sorted(result["files"]) == sorted(str(p) for p in out.iterdir() if p.name != "nearest.txt")


def test_routing_needs_mixlora(stacks, suite):
    from mixlora.analysis.routing import collect_selections

    with pytest.raises(ValueError, match="needs MixLoRA"):
        collect_selections(stacks["lora"].model, [], progress=False)
