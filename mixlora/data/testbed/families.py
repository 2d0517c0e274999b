"""The twelve tasks: three attribute families x four conflicting mappings of the same attribute.

A :class:`Task` reads one attribute of the image (its ``family``) and answers by its ``kind``:

* ``name``: the value itself ("red");
* ``next``: the next value in :data:`~mixlora.data.testbed.vocab.CYCLES` ("green");
* ``flip``: the opposite value in :data:`~mixlora.data.testbed.vocab.FLIPS` ("blue");
* ``verify``: "yes" or "no" to a question naming a value ("Is the object red?").

:meth:`Task.draw` turns an image's attributes into an :class:`Instance` (the named value, if any, and the
answer); :meth:`Task.instruction` phrases an instance with one template. Drawing and phrasing are separate so
that the seen and unseen test splits share instances and differ only in wording.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mixlora.data.testbed.templates import TRAIN_TEMPLATES, UNSEEN_TEMPLATES
from mixlora.data.testbed.vocab import FAMILIES, FLIPS, TASK_PREFIX, VALUES, next_value

KINDS: tuple[str, ...] = ("name", "next", "flip", "verify")


@dataclass(frozen=True)
class Instance:
    """One question about one image: ``named`` is the value a verify question names (else None)."""

    named: str | None
    answer: str


def verify_says_yes(k: int) -> bool:
    """Whether the ``k``-th verify instance of a split is a "yes".

    Exactly one of each pair (2m, 2m + 1) is "yes", so any prefix is balanced to within one. The pattern flips
    every four instances, so under the round-robin templates (4 train, 2 unseen) each template is asked "yes"
    and "no" equally often and the wording never gives the answer away.
    """
    return (k % 2 == 0) != ((k // 4) % 2 == 1)


@dataclass(frozen=True)
class Task:
    """One mapping of one attribute; ``name`` is ``"<family>_<kind>"``, ``task_name`` the record's task name."""

    family: str
    kind: str
    train_templates: tuple[str, ...]
    unseen_templates: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.family}_{self.kind}"

    @property
    def task_name(self) -> str:
        return f"{TASK_PREFIX}+{self.name}"

    def answer(self, attributes: dict[str, str], named: str | None = None) -> str:
        """The answer for an image with these attributes (``named``: the value a verify question names)."""
        value = attributes[self.family]
        if self.kind == "name":
            return value
        if self.kind == "next":
            return next_value(self.family, value)
        if self.kind == "flip":
            return FLIPS[self.family][value]
        if named not in VALUES[self.family]:
            raise ValueError(f"{self.name}: named value {named!r} is not one of {VALUES[self.family]}")
        return "yes" if value == named else "no"

    def draw(self, attributes: dict[str, str], k: int, rng: random.Random) -> Instance:
        """The ``k``-th instance of a split for an image with ``attributes``. Verify instances follow
        :func:`verify_says_yes`; a "no" names one of the other values, uniformly (one draw from ``rng``)."""
        if self.kind != "verify":
            return Instance(None, self.answer(attributes))
        value = attributes[self.family]
        if verify_says_yes(k):
            named = value
        else:
            named = rng.choice([other for other in VALUES[self.family] if other != value])
        return Instance(named, self.answer(attributes, named))

    def instruction(self, template: str, instance: Instance) -> str:
        """``template`` filled in for ``instance`` (the human turn's text, without the image tag)."""
        return template.format(value=instance.named) if self.kind == "verify" else template


def _make_tasks() -> tuple[Task, ...]:
    tasks = []
    for family in FAMILIES:
        for kind in KINDS:
            name = f"{family}_{kind}"
            tasks.append(Task(family, kind, TRAIN_TEMPLATES[name], UNSEEN_TEMPLATES[name]))
    return tuple(tasks)


TASKS: tuple[Task, ...] = _make_tasks()
TASKS_BY_NAME: dict[str, Task] = {task.name: task for task in TASKS}

# What a build holds unless told otherwise: colour and position, each asked as name / next / flip. Measured by full
# fine-tuning of the tiny stack (docs/testbed_data.md): the verify tasks stayed at chance after 96k examples and held
# every other task back, and size stayed at chance at the first answer token although captions named it, so
# neither can show interference between *learned* mappings. Both remain available by name (``tasks=``).
DEFAULT_TASKS: tuple[str, ...] = tuple(f"{family}_{kind}" for family in ("colour", "position")
                                       for kind in ("name", "next", "flip"))


def select_tasks(names=None) -> tuple[Task, ...]:
    """The tasks called ``names`` (e.g. ``["colour_name", "size_flip"]``; None: :data:`DEFAULT_TASKS`), in the
    canonical order of :data:`TASKS`; ValueError naming unknown or repeated names and the valid ones."""
    names = list(DEFAULT_TASKS if names is None else names)
    unknown = [n for n in names if n not in TASKS_BY_NAME]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"tasks must be distinct names from {', '.join(TASKS_BY_NAME)}; got {names!r}"
                         + (f" (unknown: {unknown})" if unknown else ""))
    return tuple(task for task in TASKS if task.name in names)
