"""The README's quick-start examples run as they are written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_examples() -> list[str]:
    """The Python blocks of the "Quick start" section that are whole programs."""
    text = README.read_text()
    start = text.index("## Quick start")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return [b for b in blocks if "from distex_zmq import Pool" in b]


def test_the_quick_start_has_its_examples():
    assert len(quick_start_examples()) == 3  # sync, async, eventkit


@pytest.mark.parametrize("index", range(3), ids=["sync", "async", "eventkit"])
def test_a_quick_start_example_runs(index, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(quick_start_examples()[index])
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the example printed nothing"
