"""Every document a tracked file points at is shipped, and every #anchor into it exists.

Scans the text files ``git ls-files`` lists (tracked, plus new files that are not ignored; binaries skipped) for

(a) references to a document that is not in the repository:
    - relative link targets in markdown files, ``[text](path#anchor)``, resolved against the file's folder;
    - repository paths of markdown files written anywhere (``docs/method.md``, ``results/paper/README.md``,
      ``docs/method.md#released-variant``): a token whose first component is a tracked top-level folder, so
      output paths such as ``runs/demo/results.md`` or ``OUT/eval/results.md`` are not taken for references;
    - bare ``<name>.md#<anchor>`` tokens, resolved against the file's folder, then the repository root;
(b) names of documents that exist only outside the repository: the released-code notes, the paper notes, the
    benchmark notes other than ``docs/benchmarks.md``, and the shared docs folder;
(c) section marks (``§``) after a document name or after "paper": sections are linked by #anchor.

An ``#anchor`` into a shipped markdown file must be the GitHub slug of one of its headings (lower case;
characters other than letters, digits, spaces, ``-`` and ``_`` removed; spaces to ``-``; ``-1``, ``-2``
for repeats). Every failure names ``file:line``.
"""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Markdown link [text](target) or image ![alt](target); the target has no spaces (titles are not used here).
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# A path-like token ending in .md with an optional #anchor. It may not start inside a longer path or URL.
MD_TOKEN = re.compile(r"(?<![\w./\-~$%{])((?:\.{1,2}/)*(?:[\w.\-]+/)*[\w\-][\w.\-]*\.md)(#[\w\-]+)?(?![\w\-])")
# Names of documents that are not part of the repository (escaped so that this file does not match itself).
FOREIGN = [
    (re.compile(r"official-code\.md"), "the released-code notes are not shipped: use docs/method.md"),
    (re.compile(r"shared[/]docs"), "the shared docs folder is not shipped: use docs/method.md or docs/benchmarks.md"),
    (re.compile(r"(?<![\w\-])paper\.md"), "the paper notes are not shipped: use docs/method.md"),
]
BENCHMARKS = re.compile(r"benchmarks\.md")
SECTION_AFTER_DOC = re.compile(r"\.md`?\)?\s*§")
# "paper", then within 60 characters a section sign and a number (also "the paper's ... ablation, " + sign + "5.3")
SECTION_AFTER_PAPER = re.compile(r"\bpaper\b[^§\n]{0,60}§\s*\d")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


@lru_cache(maxsize=1)
def tracked() -> tuple[str, ...]:
    """The repository's files: tracked ones plus new files not yet committed (untracked and not ignored),
    minus files deleted from the work tree."""
    cmd = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}); the reference check needs `git ls-files`")
    return tuple(sorted({p for p in out.decode().split("\0") if p and (ROOT / p).is_file()}))


@lru_cache(maxsize=1)
def tracked_set() -> frozenset[str]:
    files = set(tracked())
    dirs = {str(parent) for f in files for parent in PurePosixPath(f).parents if str(parent) != "."}
    return frozenset(files | dirs)


@lru_cache(maxsize=1)
def top_level_dirs() -> frozenset[str]:
    return frozenset(p.split("/", 1)[0] for p in tracked() if "/" in p)


def read_text(rel: str) -> str | None:
    """The file's text, or None for binaries, non-UTF-8 files and files missing from the work tree."""
    path = ROOT / rel
    if not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: links and emphasis reduced to their text, then slugified."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w is Unicode-aware and keeps "_", as GitHub does
    return text.replace(" ", "-")


def heading_lines(text: str) -> list[str]:
    """The ATX headings of a markdown text, outside fenced code blocks."""
    found, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            found.append(m.group(2))
    return found


def anchors_of(text: str) -> frozenset[str]:
    """The anchors GitHub gives the headings of ``text``: a repeated slug gets -1, -2, ... in order."""
    seen: dict[str, int] = {}
    out = set()
    for heading in heading_lines(text):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


@lru_cache(maxsize=None)
def anchors(rel: str) -> frozenset[str]:
    return anchors_of(read_text(rel) or "")


def normalise(base: PurePosixPath, target: str) -> str | None:
    """``target`` relative to folder ``base``, as a repository path; None if it leaves the repository."""
    parts: list[str] = []
    for part in (base / target).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def check_target(rel: str, lineno: int, path: str, anchor: str | None, candidates: list[str], problems: list[str]):
    """Record a problem unless one candidate resolution of ``path`` is shipped (and has ``anchor``)."""
    shipped = [c for c in candidates if c is not None and c in tracked_set()]
    if not shipped:
        problems.append(f"{rel}:{lineno}: {path} does not exist in the repository")
        return
    if anchor:
        doc = shipped[0]
        if doc.endswith(".md") and anchor not in anchors(doc):
            problems.append(f"{rel}:{lineno}: {doc} has no heading with anchor #{anchor}")


def code_spans_removed(line: str) -> str:
    return re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)


def scan(rel: str, text: str) -> list[str]:
    problems: list[str] = []
    here = PurePosixPath(rel).parent
    is_md = rel.endswith(".md")
    fenced = False
    for lineno, line in enumerate(text.splitlines(), 1):
        # (b) documents that exist only outside the repository
        for pattern, why in FOREIGN:
            if pattern.search(line):
                problems.append(f"{rel}:{lineno}: {why}")
        for m in BENCHMARKS.finditer(line):
            before = line[:m.start()]
            ok = before.endswith("docs/") or (here.as_posix() == "docs" and before.endswith("]("))
            if not ok:
                problems.append(f"{rel}:{lineno}: name the shipped file docs/benchmarks.md "
                                "(the benchmark notes outside the repository are not shipped)")
        # (c) section marks instead of anchors
        if SECTION_AFTER_DOC.search(line) or SECTION_AFTER_PAPER.search(line):
            problems.append(f"{rel}:{lineno}: a '§' section mark; link the shipped section instead "
                            "(e.g. docs/method.md#paper-setup)")
        # (a) relative markdown links
        if is_md:
            if FENCE.match(line):
                fenced = not fenced
                continue
            if not fenced:
                for m in LINK.finditer(code_spans_removed(line)):
                    target = m.group(1)
                    if re.match(r"^[a-z][a-z0-9+.\-]*:", target, re.I) or target.startswith("//"):
                        continue  # a URL (https:, mailto:, ...)
                    path, _, anchor = target.partition("#")
                    if not path:  # a same-file anchor
                        if anchor not in anchors(rel):
                            problems.append(f"{rel}:{lineno}: no heading with anchor #{anchor} in this file")
                        continue
                    check_target(rel, lineno, target, anchor or None, [normalise(here, path)], problems)
        # (a) markdown paths written as text (in any file, links' own targets included)
        for m in MD_TOKEN.finditer(line):
            path, anchor = m.group(1), (m.group(2) or "")[1:] or None
            first = path.split("/", 1)[0]
            if path.startswith("../") or path.startswith("./"):
                candidates = [normalise(here, path)]
            elif "/" in path and first in top_level_dirs():
                candidates = [normalise(PurePosixPath("."), path), normalise(here, path)]
            elif "/" not in path and anchor:
                candidates = [normalise(here, path), normalise(PurePosixPath("."), path)]
            else:
                continue  # an output file name or a path outside the tracked folders: not a reference
            check_target(rel, lineno, m.group(0), anchor, candidates, problems)
    return sorted(set(problems), key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def all_problems() -> list[str]:
    problems = []
    for rel in tracked():
        text = read_text(rel)
        if text is not None:
            problems.extend(scan(rel, text))
    return problems


def test_every_document_reference_is_shipped():
    problems = all_problems()
    assert not problems, "dangling document references:\n" + "\n".join(problems)


def test_the_method_and_benchmark_docs_have_their_sections():
    # Other files link to these anchors; renaming a heading must fail here, not silently break the links.
    assert {"released-variant", "corrected-variant", "released-vs-corrected", "paper-setup",
            "conditional-factor-selection", "independent-factor-selection"} <= anchors("docs/method.md")
    assert {"mme", "cv-bench", "pope", "textvqa", "classification-sets", "vision-flan-format", "lmms-eval",
            "mmavg", "released-evaluation-files"} <= anchors("docs/benchmarks.md")


# ------------------------------------------------------------------ the checker itself, on hand-written input

def test_slug_follows_github():
    assert github_slug("Decoding: our default vs the released settings") == "decoding-our-default-vs-the-released-settings"
    assert github_slug("Task interference (`scripts/interference.py`)") == "task-interference-scriptsinterferencepy"
    assert github_slug("### `prepare_mme.py`".lstrip("# ")) == "prepare_mmepy"
    assert github_slug("Released vs corrected") == "released-vs-corrected"
    assert github_slug("CV-Bench") == "cv-bench"


def test_repeated_headings_get_numbered_anchors_and_code_is_no_heading():
    text = "# A\n## Options\n```bash\n# not a heading\n```\n## Options\n## Options\n"
    assert heading_lines(text) == ["A", "Options", "Options", "Options"]
    assert anchors_of(text) == {"a", "options", "options-1", "options-2"}


# The strings are split where they would otherwise be a dangling reference in this very file.
@pytest.mark.parametrize("line,why", [
    ("see official-code" ".md for the line", "released-code notes"),
    ("the paper" ".md notes", "paper notes"),
    ("in docs/paper" ".md", "paper notes"),
    ("(benchmarks" ".md#mme)", "name the shipped file docs/benchmarks.md"),
    ("../shared" "/docs/x", "shared docs folder"),
    ("see docs/method.md " "§2", "section mark"),
    ("as in the paper's routing ablation, §" "5.3", "section mark"),
    ("docs/no_such_file" ".md", "does not exist"),
    ("docs/method.md" "#no-such-section", "no heading with anchor #no-such-section"),
    ("[x](docs/nowhere" ".md)", "does not exist"),
    ("[x](configs/no_such" ".yaml)", "does not exist"),
    ("[x](#no-such" "-heading)", "no heading with anchor"),
])
def test_flags_dangling_references(line, why):
    problems = scan("README.md", line)
    assert any(why in p and p.startswith("README.md:1: ") for p in problems), problems


@pytest.mark.parametrize("rel,line", [
    ("README.md", "[method](docs/method.md#released-variant) and docs/benchmarks.md#mme"),
    ("docs/evaluation.md", "[docs/benchmarks.md](benchmarks" ".md#mme)"),
    ("docs/evaluation.md", "[the table](method" ".md#released-vs-corrected) and [up](../README" ".md)"),
    ("README.md", "[the loop](mixlora/train/loop.py) and [configs](configs/experiment/)"),
    ("tests/test_bf16.py", "(Higham, Accuracy and Stability of Numerical Algorithms, §3.1)"),
    ("mixlora/inject.py", '"""Every released behaviour (docs/method.md#released-variant)."""'),
    ("tests/test_eval.py", 'assert (out / "eval/results.md").is_file()'),
    ("docs/evaluation.md", "writes `runs/demo/results.md` and `OUT/eval/results.md`"),
    ("README.md", "see https://github.com/org/repo/blob/main/docs/other.md#x"),
    ("docs/evaluation.md", "```\n[x](nowhere.md)\n```"),
])
def test_leaves_shipped_references_and_prose_alone(rel, line):
    assert not scan(rel, line), scan(rel, line)
