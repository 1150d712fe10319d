"""The pool in a real Jupyter kernel: a notebook run by nbclient, as papermill
and ``jupyter nbconvert --execute`` run one. Each cell runs inside the
kernel's event loop, ``__main__`` is the kernel's namespace (no file), and
an interrupt is a SIGINT to the kernel.

The kernel is this interpreter (``sys.executable``), through a kernelspec
in a temporary ``JUPYTER_PATH``; nothing is registered for the user.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import pid_alive, wait_until

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.timeout(120)

KERNEL = "distex_zmq_test"

CELLS = [
    # 0: a pool, and what a user defines in cells: a dataclass, a task that
    # prints and logs, a function that reads a global of another cell
    """\
import dataclasses, logging, os, signal, threading, time
from distex_zmq import Pool
pool = Pool(2)
workers = pool.run_on_all(os.getpid)

@dataclasses.dataclass
class P:
    x: int

def task(p):
    logging.getLogger("notebook.task").warning("logged %s", p.x)
    return P(p.x * 2)

def scaled(x):
    return x * SCALE
""",
    # 1: the sync API from the kernel's loop thread
    "SCALE = 3\nlist(pool.map(task, [P(1), P(2)])), list(pool.map(scaled, range(4)))",
    "pool.run(lambda: P(5)), pool.submit(task, P(6)).result()",
    # 3: top-level await and async for
    "await pool.run_async(task, P(7)), [y async for y in pool.map_async(scaled, [5])]",
    # 4: a done callback, run on the pool's thread
    """\
done = threading.Event()
future = pool.submit(time.sleep, 0.2)
future.add_done_callback(lambda f: (print("callback", f.result()), done.set()))
done.wait(30)""",
    # 5: a task's exception
    "pool.run(task, None)",
    # 6: an interrupt in the middle of a long map (the kernel interrupts itself)
    """\
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
list(pool.map(time.sleep, [0.2] * 200))""",
    # 7: the kernel and the pool go on
    "sorted(pool.run_on_all(os.getpid)) == sorted(workers), pool.run(abs, -4)",
    "print(*workers)",
]


def outputs(cell: Any) -> dict[str, str]:
    """A cell's outputs: its streams, its result and its error, as text."""
    found: dict[str, str] = {}
    for out in cell.outputs:
        if out.output_type == "stream":
            found[out.name] = found.get(out.name, "") + out.text
        elif out.output_type == "execute_result":
            found["result"] = out.data["text/plain"]
        elif out.output_type == "error":
            traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(out.traceback))
            found["error"] = f"{out.ename}: {out.evalue}\n{traceback}"
    return found


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernelspec for this interpreter, and Jupyter's and IPython's files,
    in ``tmp_path``."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return tmp_path


def test_a_notebook_uses_the_pool(kernel_env: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=60,
        allow_errors=True,
        resources={"metadata": {"path": str(kernel_env)}},
    )
    client.execute()
    cells = [outputs(cell) for cell in nb.cells]
    for i in (0, 1, 2, 3, 4, 7, 8):
        assert "error" not in cells[i], (i, cells[i]["error"])

    assert cells[1]["result"] == "([P(x=2), P(x=4)], [0, 3, 6, 9])"
    # the tasks' log records, re-emitted on the pool's thread, belong to the
    # cell that ran them (not to the cell that made the pool)
    assert "logged 1" in cells[1].get("stderr", "") and "logged 2" in cells[1].get("stderr", "")
    assert "logged" not in cells[0].get("stderr", "")
    assert cells[2]["result"] == "(P(x=5), P(x=12))"
    assert cells[3]["result"] == "(P(x=14), [15])"
    assert cells[4]["stdout"] == "callback None\n" and cells[4]["result"] == "True"

    error = cells[5]["error"]
    assert error.startswith("AttributeError: 'NoneType' object has no attribute 'x'")
    assert "RemoteException" in error and "in task" in error
    # the line of the cell, which only the kernel has
    assert 'logging.getLogger("notebook.task").warning("logged %s", p.x)' in error

    assert cells[6]["error"].startswith("KeyboardInterrupt")
    assert cells[7]["result"] == "(True, 4)"

    # the kernel has exited: its workers did too
    workers = [int(pid) for pid in cells[8]["stdout"].split()]
    assert len(workers) == 2
    assert wait_until(lambda: not any(pid_alive(p) for p in workers), timeout=10), workers
