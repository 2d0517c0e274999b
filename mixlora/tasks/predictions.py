"""The per-task predictions file and its resume rules.

``OUT/eval/<task>/predictions.jsonl``: one JSON object per generated answer, appended and flushed after every
batch, so a killed evaluation loses at most the batch in flight::

    {"uid": "existence/synth_0000.png#0", ...the task's record fields (targets, category, split, ...),
     "asked": "<the user text the model saw>", "prediction": "Yes"}

``OUT/eval/<task>/settings.json`` holds everything that changes the answers (task paths and prompts, decoding,
model source). A later run with the same settings skips every uid already in the file; with different settings
it stops with the list of differences instead of mixing answers from two configurations (``overwrite=True``
starts the task afresh). A last line cut short by a kill (no newline, not valid JSON) is dropped with a warning;
any other bad line is an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

from mixlora.checkpoint import atomic_write

from .common import TaskError

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
SETTINGS_FILE = "settings.json"


def settings_differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts (nested keys joined with ".")."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += settings_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class PredictionFile:
    """Resumable predictions of one task in ``folder`` (see the module docstring).

    Args:
        folder: ``OUT/eval/<task>``; created if needed.
        settings: JSON-serialisable dict compared with the stored settings.
        overwrite: delete existing predictions (and settings) first.
    """

    def __init__(self, folder: str | Path, settings: dict, overwrite: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / PREDICTIONS_FILE
        self.settings_path = self.folder / SETTINGS_FILE
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings, default=str))
        if overwrite:
            for p in (self.path, self.settings_path):
                if p.exists():
                    p.unlink()
        if self.path.exists() and self.settings_path.exists():
            stored = json.loads(self.settings_path.read_text(encoding="utf-8"))
            diff = settings_differences(stored, settings)
            if diff:
                raise TaskError(
                    f"{self.path} was made with other settings ({'; '.join(diff[:8])}). Resuming would mix answers "
                    "from two configurations: pass overwrite=true to start this task again, use another "
                    "output_dir, or restore the earlier settings.")
        elif self.path.exists():
            raise TaskError(f"{self.path} exists without {SETTINGS_FILE}, so its settings are unknown; delete it or "
                            "pass overwrite=true.")
        atomic_write(self.settings_path,
                     lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n"))

    def load(self) -> dict[str, dict]:
        """{uid: record} of the predictions already written (a torn last line is removed from the file)."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        done: dict[str, dict] = {}
        for line_no, raw in enumerate(lines, start=1):
            if raw.strip():
                self._add(done, self._parse(raw, line_no), line_no)
        if tail.strip():
            try:
                record = self._parse(tail, len(lines) + 1)
            except TaskError:
                logger.warning("%s: dropping an incomplete last line (the previous run was interrupted while "
                               "writing it); that example will be generated again", self.path)
                with open(self.path, "r+b") as f:
                    f.truncate(len(data) - len(tail))
            else:
                self._add(done, record, len(lines) + 1)
                with open(self.path, "ab") as f:
                    f.write(b"\n")
        return done

    def _parse(self, raw: bytes, line_no: int) -> dict:
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TaskError(f"{self.path} line {line_no}: not a JSON object ({err}); delete the line or pass "
                            "overwrite=true") from None
        if not isinstance(record, dict) or not isinstance(record.get("uid"), str) \
                or not isinstance(record.get("prediction"), str):
            raise TaskError(f"{self.path} line {line_no}: expected an object with string 'uid' and 'prediction'; "
                            "delete the line or pass overwrite=true")
        return record

    def _add(self, done: dict, record: dict, line_no: int) -> None:
        if record["uid"] in done:
            logger.warning("%s line %d repeats uid %r; the first answer is kept", self.path, line_no, record["uid"])
            return
        done[record["uid"]] = record

    def append(self, records: Iterable[Mapping]) -> None:
        """Append records and flush them to the OS, so they survive the process being killed."""
        text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
