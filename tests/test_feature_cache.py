"""The frozen-tower feature cache and image-token pooling.

References: the tower itself (a cached request must equal its first computation bit for bit, and the tower must
not be called again), a tower with one changed weight (must miss), and 2x2 means written out by hand.
"""

from __future__ import annotations

import pytest
import torch

from mixlora.model import build_tiny_llava
from mixlora.model.feature_cache import FeatureCache, tower_digest


def _model(seed=0):
    return build_tiny_llava(vocab_size=64, image_token_id=5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            seed=seed)


class Counting(torch.nn.Module):
    """Wraps a tower and counts the images it is asked to encode."""

    def __init__(self, tower):
        super().__init__()
        self.inner, self.images = tower, 0

    def forward(self, pixels):
        self.images += pixels.shape[0]
        return self.inner(pixels)


def _pixels(n, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_cached_features_are_bit_identical_and_persist(tmp_path):
    tower = _model().vision_tower
    pixels = _pixels(5)
    reference = tower(pixels)
    counting = Counting(tower)
    cache = FeatureCache(tmp_path, counting)
    first = cache(pixels)
    assert torch.equal(first, reference) and counting.images == 5
    again = cache(pixels[[4, 0, 0]])  # repeats and a new order: served from memory
    assert torch.equal(again, reference[[4, 0, 0]]) and counting.images == 5
    assert cache.flush() is not None
    reopened_tower = Counting(tower)
    reopened = FeatureCache(tmp_path, reopened_tower)  # a new process's view: the shard on disk
    assert torch.equal(reopened(pixels), reference) and reopened_tower.images == 0
    assert reopened.hits == 5 and reopened.misses == 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_changed_tower_or_image_misses(tmp_path):
    tower = _model().vision_tower
    pixels = _pixels(3)
    cache = FeatureCache(tmp_path, tower)
    cache(pixels)
    cache.flush()
    changed = _model().vision_tower
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert tower_digest(changed) != tower_digest(tower)
    counting = Counting(changed)
    fresh = FeatureCache(tmp_path, counting)
    out = fresh(pixels)
    assert counting.images == 3 and torch.equal(out, changed(pixels))
    edited = pixels.clone()
    edited[1, 0, 0, 0] += 0.5  # one pixel of one image
    fresh(edited)
    assert counting.images == 4  # only the edited image is recomputed


def test_a_trainable_tower_is_refused(tmp_path):
    tower = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="frozen"):
        FeatureCache(tmp_path, tower)


def test_pooling_averages_2x2_windows_by_hand():
    model = _model()
    assert model.num_image_tokens == 64
    model.set_image_pool(2)
    assert model.num_image_tokens == 16
    features = model.vision_tower(_pixels(2))  # [2, 64, D], row-major 8 x 8 grid
    seen = {}
    model.projector.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    model.encode_images(_pixels(2))
    pooled = seen["x"]
    assert pooled.shape == (2, 16, features.shape[-1])
    for row in range(4):
        for col in range(4):
            cells = [features[:, (2 * row + dr) * 8 + (2 * col + dc)] for dr in (0, 1) for dc in (0, 1)]
            expected = (cells[0] + cells[1] + cells[2] + cells[3]) / 4
            # avg_pool2d sums 4 float32 terms and divides; any order of 4 additions is within 2 ulp of the
            # magnitudes involved (|x| < 10 here), far below 1e-5.
            torch.testing.assert_close(pooled[:, row * 4 + col], expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        model.set_image_pool(3)
    with pytest.raises(ValueError, match="positive integer"):
        model.set_image_pool(0)


def test_pooled_cached_instruction_routed_stack_trains_and_reloads(tmp_path):
    """train.py with model.image_pool=2, a feature cache and instruction routing: shards are written, the run
    reloads with 16 image tokens, and a second run over the same images adds no shard (every image a hit)."""
    from mixlora.build import load_run
    from mixlora.data.synthetic import generate_suite
    from mixlora.train import compose_config, run

    suite = tmp_path / "suite"
    generate_suite(suite, seed=0, per_task=2, eval_per_task=6, mme_images=1, stage1_size=4, seen_per_task=1,
                   progress=False)
    cache = tmp_path / "cache"

    def train(out, seed):
        run(compose_config([f"output_dir={out}", f"data.annotations={suite / 'train.json'}",
                            f"data.image_folder={suite / 'images'}", "data.generate=null", "logger=disabled",
                            "trainer.progress_bar=false", "trainer.micro_batch_size=4", "trainer.global_batch_size=4",
                            "trainer.schedule_steps=3", "trainer.save_every=0", "model.image_pool=2",
                            f"model.feature_cache={cache}", "adapter.routing_tokens=instruction", f"seed={seed}"]))

    train(tmp_path / "a", 0)
    shards = sorted(cache.rglob("shard-*.safetensors"))
    assert shards
    stack, cfg = load_run(tmp_path / "a")
    assert stack.model.num_image_tokens == 16 and stack.model.routes_on_instruction()
    train(tmp_path / "b", 0)  # same data order: the same images, all served from the shards
    assert sorted(cache.rglob("shard-*.safetensors")) == shards


def _one_record(folder):
    import json

    from PIL import Image

    Image.new("RGB", (64, 64)).save(folder / "a.png")
    record = {"id": "0", "image": "a.png", "task_name": "t+x",
              "conversations": [{"from": "human", "value": "Colour?\n<image>"}, {"from": "gpt", "value": "red"}]}
    (folder / "train.json").write_text(json.dumps([record]))


@pytest.mark.parametrize("override, message", [
    ("model.image_pool=0", "model.image_pool must be a positive integer"),
    ("model.image_pool=3", "divisible"),
])
def test_bad_pooling_is_refused_before_training(tmp_path, override, message):
    from mixlora.train import ConfigError, compose_config, run

    _one_record(tmp_path)
    with pytest.raises((ConfigError, ValueError), match=message):
        run(compose_config([f"output_dir={tmp_path / 'run'}", "logger=disabled", "data.generate=null",
                            f"data.annotations={tmp_path / 'train.json'}", f"data.image_folder={tmp_path}",
                            override]))


def test_feature_cache_that_is_a_file_is_refused(tmp_path):
    from mixlora.train import ConfigError, compose_config, run

    (tmp_path / "file").write_text("x")
    _one_record(tmp_path)
    with pytest.raises(ConfigError, match="model.feature_cache must be a folder"):
        run(compose_config([f"output_dir={tmp_path / 'run'}", "logger=disabled", "data.generate=null",
                            f"data.annotations={tmp_path / 'train.json'}", f"data.image_folder={tmp_path}",
                            f"model.feature_cache={tmp_path / 'file'}"]))
