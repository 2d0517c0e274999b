"""The interference testbed: rows, recipe, report (``python -m mixlora.testbed``; docs/testbed.md)."""
