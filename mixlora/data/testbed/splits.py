"""The image pools and the records of every split, as plain Python objects (no file is written here).

Randomness: each component draws from its own ``random.Random(f"{seed}/{component}")`` stream (string seeds
are hashed with SHA-512, independent of ``PYTHONHASHSEED``), and every choice is made from a fixed tuple, never
from a set, so the same arguments give the same records in any process. Components: ``images/train``,
``images/test``, ``stage1``, ``train/<task>`` and ``test/<task>`` (``<task>`` e.g. ``colour_name``).
"""

from __future__ import annotations

import random

from mixlora.constants import IMAGE_TOKEN
from mixlora.data.testbed.families import Task
from mixlora.data.testbed.render import Scene, place, sample_scene
from mixlora.data.testbed.templates import CAPTION_QUESTIONS, CAPTION_TEMPLATES
from mixlora.data.testbed.vocab import TASK_PREFIX

CAPTION_TASK = "caption"
# Redraws of radius and centre allowed per test image before concluding that the training pool has used up
# every placement of its attributes (only possible with pools far larger than the defaults).
_MAX_PLACEMENT_TRIES = 1000


def rng_for(seed: int, component: str) -> random.Random:
    """The random stream of one component."""
    return random.Random(f"{seed}/{component}")


def image_name(n: int) -> str:
    """File name of the ``n``-th image of a pool."""
    return f"{n:05d}.png"


def draw_pools(seed: int, image_size: int, train_images: int, test_images: int) -> tuple[list[Scene], list[Scene]]:
    """The training and test pools. No test scene renders to the same pixels as a training scene: a colliding
    draw keeps its attributes (so their distribution is untouched) and redraws only radius and centre."""
    rng = rng_for(seed, "images/train")
    train = [sample_scene(rng, image_size) for _ in range(train_images)]
    taken = {scene.key for scene in train}  # membership tests only; never iterated
    rng = rng_for(seed, "images/test")
    test = []
    for n in range(test_images):
        scene = sample_scene(rng, image_size)
        tries = 1
        while scene.key in taken:
            if tries == _MAX_PLACEMENT_TRIES:
                raise ValueError(f"test image {n}: every placement of a {scene.size} {scene.colour} {scene.shape} "
                                 f"in the {scene.position} is already in the training pool; use fewer "
                                 "train_images or a larger image_size")
            scene = place(rng, image_size, scene.colour, scene.size, scene.position, scene.shape)
            tries += 1
        test.append(scene)
    return train, test


def pick(rng: random.Random, pool_size: int, n: int) -> list[int]:
    """``n`` pool indices: shuffled passes over the whole pool, so no image repeats before all are used."""
    picked: list[int] = []
    while len(picked) < n:
        order = list(range(pool_size))
        rng.shuffle(order)
        picked += order
    return picked[:n]


def vision_flan_record(record_id: str, image: str, task_name: str, question: str, answer: str) -> dict:
    """A Vision-Flan training record; the image tag ends the human turn."""
    return {
        "id": record_id,
        "image": image,
        "task_name": task_name,
        "conversations": [{"from": "human", "value": f"{question}\n{IMAGE_TOKEN}"},
                          {"from": "gpt", "value": answer}],
    }


def caption(scene: Scene, k: int) -> str:
    """The ``k``-th caption phrasing for ``scene`` (round-robin over the templates)."""
    template = CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)]
    return template.format(shape=scene.shape, **scene.attributes)


def stage1_records(seed: int, pool: list[Scene], n: int, prefix: str) -> list[dict]:
    """``n`` caption records over the training pool; ``prefix`` is the image folder ("train")."""
    rng = rng_for(seed, "stage1")
    records = []
    # 4 questions and 3 captions round-robin: coprime counts, so all 12 pairings occur.
    for k, i in enumerate(pick(rng, len(pool), n)):
        question = CAPTION_QUESTIONS[k % len(CAPTION_QUESTIONS)]
        records.append(vision_flan_record(f"stage1-{k:05d}", f"{prefix}/{image_name(i)}",
                                          f"{TASK_PREFIX}+{CAPTION_TASK}", question, caption(pool[i], k)))
    return records


def train_records(seed: int, pool: list[Scene], per_task: int, prefix: str, tasks: tuple[Task, ...]) -> list[dict]:
    """``per_task`` records per task, task after task, templates round-robin, images from the shared pool.
    Each task draws from its own stream, so a task's records do not depend on which other tasks are built."""
    records = []
    for task in tasks:
        rng = rng_for(seed, f"train/{task.name}")
        for k, i in enumerate(pick(rng, len(pool), per_task)):
            instance = task.draw(pool[i].attributes, k, rng)
            template = task.train_templates[k % len(task.train_templates)]
            records.append(vision_flan_record(f"train-{len(records):05d}", f"{prefix}/{image_name(i)}",
                                              task.task_name, task.instruction(template, instance),
                                              instance.answer))
    return records


def test_records(seed: int, pool: list[Scene], per_task: int, image_prefix: str,
                 tasks: tuple[Task, ...]) -> tuple[list[dict], list[dict]]:
    """The ``seen`` and ``unseen`` splits: the same instances (image, named value, target) line by line,
    phrased with the training templates and the unseen templates respectively (both round-robin).
    ``image_prefix`` is the image folder relative to a split's folder."""
    seen, unseen = [], []
    for task in tasks:
        rng = rng_for(seed, f"test/{task.name}")
        for k, i in enumerate(pick(rng, len(pool), per_task)):
            instance = task.draw(pool[i].attributes, k, rng)
            for split, rows, templates in (("seen", seen, task.train_templates),
                                           ("unseen", unseen, task.unseen_templates)):
                rows.append({
                    "unique_id": f"{split}-{len(rows):05d}",
                    "task_name": task.task_name,
                    "family": task.family,
                    "prompt": task.instruction(templates[k % len(templates)], instance),
                    "target": instance.answer,
                    "image_path": f"{image_prefix}/{image_name(i)}",
                })
    return seen, unseen
