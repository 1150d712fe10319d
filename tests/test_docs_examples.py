"""The Python examples of the pages under docs/ that are whole programs run as
they are written and print what the page says they print.

``docs/clients.md`` has tests of its own (``test_clients.py``); the README's
are in ``test_readme.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: Each page's ```python blocks, in order: a pattern of a line that the
#: example prints (stdout or stderr) when it is a whole program that runs on
#: this machine, or None for a fragment (names it does not define, or
#: remote hosts).
EXAMPLES: dict[str, list[str | None]] = {
    "index.md": [r"\[0, 1, 4, 9, 16, 25, 36, 49, 64, 81\]"],
    "guide/usage.md": [
        r"\[1, 2, 3\]",
        r"\[Decimal\('0\.3{50}'\), Decimal\('0\.6{49}7'\)\]",
        None,
        None,
    ],
    "guide/observability.md": [
        r"\[[^\s:\]]+:\d+\] working on 1",
        r"\[[^\s:\]]+:\d+\] task: 100%\|.*\| 5/5 .*",
        r"[^\s:]+:\d+ myapp\.tasks INFO working on 7",
        r"ready 2 of 2",
        None,
        None,
        None,
    ],
    "guide/ssh.md": [None],
    "guide/spawner.md": [None],
    "guide/docker.md": [None],
}
#: Pages whose examples other test files run.
ELSEWHERE = {"clients.md"}


def python_blocks(page: str) -> list[str]:
    """Every ```python block of a page of docs/."""
    text = (DOCS / page).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_every_block_is_listed():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    with_python = {page for page in pages if python_blocks(page)}
    assert with_python - ELSEWHERE == set(EXAMPLES)
    for page, expected in EXAMPLES.items():
        assert len(python_blocks(page)) == len(expected), page


RUNNABLE = [
    (page, index, pattern)
    for page, patterns in EXAMPLES.items()
    for index, pattern in enumerate(patterns)
    if pattern is not None
]


@pytest.mark.parametrize(
    "page, index, pattern", RUNNABLE, ids=[f"{page}#{index}" for page, index, _ in RUNNABLE]
)
def test_an_example_runs(page, index, pattern, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(python_blocks(page)[index])
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any(re.fullmatch(pattern, line) for line in lines), (proc.stdout, proc.stderr)
