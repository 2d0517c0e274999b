"""Synthetic interference testbed: one image pool, twelve tasks that read the same attribute and answer it in
conflicting ways (three attribute families x name / next / flip / verify), so task interference is measurable
on a CPU-sized model.

Public names: :func:`make_testbed` (write a testbed folder), :data:`TASKS` and :data:`FAMILIES` (the tasks and
attribute families), :func:`render` (draw a :class:`Scene`) and :func:`read_attributes` (read an image's
attributes back from its pixels). Command line: ``python -m mixlora.data.testbed --out DIR``.
Formats and the mapping table: docs/testbed_data.md.
"""

from mixlora.data.testbed.build import make_testbed
from mixlora.data.testbed.families import TASKS, Task
from mixlora.data.testbed.render import Scene, read_attributes, render
from mixlora.data.testbed.vocab import FAMILIES

__all__ = ["FAMILIES", "TASKS", "Scene", "Task", "make_testbed", "read_attributes", "render"]
