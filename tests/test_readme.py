"""Every Python snippet of the README runs as it is written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parent.parent / "README.md"
#: The README's Python snippets, in order: each is a whole program.
SNIPPETS = ["sync", "async", "eventkit", "executor"]


def python_snippets() -> list[str]:
    """Every ```python block of the README."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_every_snippet_is_run_here():
    assert len(python_snippets()) == len(SNIPPETS)


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=SNIPPETS)
def test_a_snippet_runs(index, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(python_snippets()[index])
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the snippet printed nothing"
