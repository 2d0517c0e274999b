"""Progress reports a person can read anywhere: a tqdm bar on a terminal, plain log lines in a batch log.

A bar redraws one line with carriage returns; in a file (a batch system's stdout, ``| tee``) it leaves either
nothing readable or thousands of fragments. So every long loop (training steps, evaluation examples) takes a
``progress`` mode:

    auto   a bar when stdout and stderr are both terminals, else lines
    bar    the tqdm bar (on stderr)
    lines  one plain, flushed log line per interval (mixlora's loggers at INFO; train.py and eval.py send them to
           stdout and their log file)
    none   nothing

Rates and ETAs count this process only: ``rate = work done since this process started / time since then`` and
``ETA = work left / rate``, so a resumed run (or an evaluation that reuses earlier predictions) reports its own
speed rather than one diluted by the work a previous process did.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable, Optional

PROGRESS_MODES = ("auto", "bar", "lines", "none")

logger = logging.getLogger(__name__)


def check_progress(value: Any, name: str = "progress") -> str:
    """``value`` if it is one of :data:`PROGRESS_MODES`; true/false are read as ``auto``/``none`` (the older
    boolean option). ValueError naming ``name`` and the choices otherwise."""
    if value is True:
        return "auto"
    if value is False:
        return "none"
    if value not in PROGRESS_MODES:
        raise ValueError(f"{name}={value!r} is not a valid option; choose one of "
                         f"{', '.join(map(repr, PROGRESS_MODES))} (or true/false for auto/none).")
    return value


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def resolve_progress(value: Any, name: str = "progress", streams: Optional[tuple] = None) -> str:
    """The concrete mode (``bar``, ``lines`` or ``none``) of ``value`` (see :func:`check_progress`).

    ``auto`` becomes ``bar`` only when every stream of ``streams`` (default: stdout and stderr) is a terminal:
    the bar goes to stderr and the log lines to stdout, and if either is redirected someone reads a file.
    """
    mode = check_progress(value, name)
    if mode != "auto":
        return mode
    streams = (sys.stdout, sys.stderr) if streams is None else streams
    return "bar" if all(_is_terminal(s) for s in streams) else "lines"


def format_duration(seconds: Optional[float]) -> str:
    """``H:MM:SS`` (hours unbounded, e.g. ``26:00:05``); ``?`` when unknown (no rate yet, or not finite)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def eta_seconds(done_here: float, left: float, elapsed_here: float) -> Optional[float]:
    """Seconds to do ``left`` more units at this process's rate (``done_here`` units in ``elapsed_here`` s);
    None before anything was done here."""
    if done_here <= 0 or elapsed_here <= 0:
        return None
    return left * elapsed_here / done_here


def train_line(step: int, total: int, loss: float, lr: float, tokens_per_s: float, elapsed_here: float,
               steps_here: int, extra: str = "") -> str:
    """``step 120/500 (24%) | loss 2.3412 | lr 9.8e-04 | 3,210 tok/s | elapsed 0:06:01 | ETA 0:19:03``.

    The percentage is floored (100% only at the last step); ``elapsed`` and the ETA are this process's
    (``steps_here`` optimiser steps in ``elapsed_here`` seconds; module docstring). ``extra`` is appended as
    one more ``| ...`` field when non-empty.
    """
    pct = 100 * step // total if total > 0 else 100
    eta = eta_seconds(steps_here, total - step, elapsed_here)
    line = (f"step {step}/{total} ({pct}%) | loss {loss:.4f} | lr {lr:.1e} | {tokens_per_s:,.0f} tok/s | "
            f"elapsed {format_duration(elapsed_here)} | ETA {format_duration(eta)}")
    return f"{line} | {extra}" if extra else line


def eval_line(task: str, done: int, total: int, done_here: int, elapsed_here: float) -> str:
    """``mme: 480/2374 examples | 5.1 ex/s | ETA 0:06:11``: ``done`` of ``total`` examples predicted, of them
    ``done_here`` by this process in ``elapsed_here`` seconds (the rest were reused from an earlier run)."""
    rate = done_here / elapsed_here if elapsed_here > 0 else 0.0
    eta = eta_seconds(done_here, total - done, elapsed_here)
    return f"{task}: {done}/{total} examples | {rate:.1f} ex/s | ETA {format_duration(eta)}"


class TaskProgress:
    """Progress of one evaluation task: ``update(n)`` per generated batch, ``close()`` at the end.

    ``mode`` ``bar``: a tqdm bar; ``lines``: :func:`eval_line` through ``emit`` when at least ``every_s`` seconds
    passed since the previous line (0: after every batch), and once more at ``close()`` if anything was generated
    since the last line, so the log always ends at N/N; ``none``: nothing. ``clock`` is injectable for tests.
    """

    def __init__(self, task: str, total: int, initial: int, mode: str, every_s: float = 30.0,
                 emit: Optional[Callable[[str], None]] = None, clock: Callable[[], float] = time.monotonic):
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"TaskProgress mode must be 'bar', 'lines' or 'none' (resolve 'auto' with "
                             f"resolve_progress first), got {mode!r}")
        self.task, self.total, self.initial, self.mode, self.every_s = task, int(total), int(initial), mode, every_s
        self.done = self.initial
        self.emit = emit if emit is not None else logger.info
        self.clock = clock
        self.start = self.last = clock()
        self.reported = self.done
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.initial, desc=f"eval {task}", unit="ex")

    def update(self, n: int) -> None:
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines":
            now = self.clock()
            if now - self.last >= self.every_s:
                self._line(now)

    def _line(self, now: float) -> None:
        self.emit(eval_line(self.task, self.done, self.total, self.done - self.initial, now - self.start))
        self.last, self.reported = now, self.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.done != self.reported:
            self._line(self.clock())

    def __enter__(self) -> "TaskProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
