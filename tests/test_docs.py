"""What the documentation shows works: every code block of README.md and docs/*.md runs.

The ```python blocks run in order in one fresh Python process, as a reader pasting them one after the other would
(README.md first, then docs/*.md by name); a block that raises fails its test, and the blocks after it are not
run. The ```bash blocks run one by one with the venv's bin first on PATH. Both run in a scratch copy of the
repository (without .git, .venv and runs/, with .venv linked), so nothing the docs write lands in the checkout.

A block that needs what a fresh machine lacks (a downloaded data set, the Hub, hours of training, torchrun) is
preceded by a line ``<!-- not-run: REASON -->`` immediately above its opening fence; its test is skipped with
that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.+?)\s*-->\s*$")
IGNORE = {".git", ".venv", "runs", ".pytest_cache", "__pycache__", "build", "dist"}


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the not-run reason

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}:{self.lang}"


def parse_blocks(doc: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the not-run reason of each (None: run it)."""
    lines = doc.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        above = NOT_RUN.match(lines[start - 1]) if start > 0 else None
        blocks.append(Block(doc, start + 1, m.group(1) or "text", "\n".join(body) + "\n",
                            above.group(1) if above else None))  # fmt: skip
        i += 1
    return blocks


BLOCKS = [b for doc in DOCS for b in parse_blocks(doc)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
BASH = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell", "console")]

# One Python process for every block, in order: each runs in the same namespace; the first failure stops it.
RUNNER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
results = {}
namespace = {"__name__": "__main__"}
for block in blocks:
    try:
        exec(compile(block["code"], block["id"], "exec"), namespace)
        results[block["id"]] = None
    except BaseException:
        results[block["id"]] = traceback.format_exc(limit=6)
        break
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch copy of the repository to run the docs in, with the real .venv linked."""
    work = tmp_path_factory.mktemp("docs") / "repo"
    shutil.copytree(ROOT, work, ignore=lambda d, names: [n for n in names if n in IGNORE], symlinks=True)
    venv = ROOT / ".venv"
    if venv.exists():
        (work / ".venv").symlink_to(venv)
    else:  # the tests run from an interpreter outside .venv: give the docs that one
        (work / ".venv" / "bin").mkdir(parents=True)
        for exe in ("python", "imagegpt"):
            src = Path(sys.executable).with_name(exe)
            if src.exists():
                (work / ".venv" / "bin" / exe).symlink_to(src)
    return work


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{work / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"  # no network at run time: a block that needs the Hub must be marked not-run
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def python_results(workdir) -> dict[str, str | None]:
    runnable = [dict(id=b.id, code=b.code) for b in PYTHON if b.skip is None]
    spec, out = workdir / ".docs-blocks.json", workdir / ".docs-results.json"
    spec.write_text(json.dumps(runnable))
    done = subprocess.run([sys.executable, "-c", RUNNER, str(spec), str(out)], cwd=workdir, env=_env(workdir),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if not out.exists():
        pytest.fail(f"the docs' Python process died:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_block_runs(block, python_results):
    if block.skip:
        pytest.skip(block.skip)
    if block.id not in python_results:
        pytest.fail("not run: an earlier Python block failed")
    error = python_results[block.id]
    assert error is None, f"{block.id} raised:\n{error}"


@pytest.mark.parametrize("block", BASH, ids=lambda b: b.id)
def test_bash_block_runs(block, workdir):
    if block.skip:
        pytest.skip(block.skip)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir, env=_env(workdir),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_commands_run_from_the_venv_without_activating_it():
    """After `bash scripts/setup.sh` the venv is not active: every command calls .venv/bin/... (or activates)."""
    bare = re.compile(r"(^|[;&|(]\s*)(imagegpt|python|pytest|torchrun)\b")
    for block in BASH:
        if "source .venv/bin/activate" in block.code:
            continue
        for n, line in enumerate(block.code.splitlines()):
            code = line.split("#", 1)[0].strip()
            assert not bare.search(code), f"{block.id} line {n + 1} calls a bare command (exit 127 after setup): {line}"


def test_not_run_markers_give_a_reason_and_sit_on_a_fence():
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for n, line in enumerate(lines):
            if "not-run" in line:
                assert NOT_RUN.match(line), f"{doc.name}:{n + 1}: write <!-- not-run: REASON -->"
                assert n + 1 < len(lines) and FENCE.match(lines[n + 1]), f"{doc.name}:{n + 1}: not above a fence"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_to_headings_resolve():
    """Every ``[text](#anchor)`` and ``[text](file.md#anchor)`` between the docs names a heading that exists."""
    anchors = {}
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)  # a '# comment' in code is no heading
        anchors[doc.resolve()] = {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    broken = []
    for doc in DOCS:
        for target, anchor in re.findall(r"\]\(([\w./-]*?\.md)?#([^)\s]+)\)", doc.read_text()):
            path = (doc.parent / target).resolve() if target else doc.resolve()
            if path in anchors and anchor not in anchors[path]:
                broken.append(f"{doc.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, "links to headings that do not exist:\n" + "\n".join(broken)
