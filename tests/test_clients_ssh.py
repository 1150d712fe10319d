"""Real clients with SSH workers on the namespace cluster (``tests.multihost``):
script objects from a script run as ``__main__``, dask and joblib with the
script's functions, and scikit-learn with ``n_jobs=-1`` across hosts. Run
under the cluster lock (see the notes of the tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distex_zmq import Pool
from tests.multihost import REMOTE_PYTHON, hostnames, unavailable

REASON = unavailable()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.timeout(180),
]

SCRIPTS = Path(__file__).resolve().parent / "scripts"
ROOT = SCRIPTS.parent.parent


def run_script(name: str, *args: str) -> str:
    """Run ``tests/scripts/<name>`` as ``__main__`` against the cluster."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DZQ_SSH_OPTIONS=json.dumps({"remote_python": REMOTE_PYTHON}),
    )
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_script_objects_travel_to_ssh_workers(ssh_home):
    assert run_script("script_objects.py", "ssh:dzq-a/2").endswith("OK\n")


def test_dask_and_joblib_with_script_functions_on_ssh_workers(ssh_home):
    pytest.importorskip("dask")
    pytest.importorskip("joblib")
    assert run_script("clients_script.py", "3", "ssh://dzq-b").endswith("OK\n")


def test_scikit_learn_grid_search_across_hosts(ssh_home):
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    import distex_zmq.joblib  # noqa: F401

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}
    here = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    with Pool(1, ["ssh://dzq-a/2"], remote_python=REMOTE_PYTHON) as pool:
        assert sorted(set(hostnames(pool))) == sorted({os.uname().nodename, "dzq-a"})
        with joblib.parallel_config(backend="distex_zmq", pool=pool):
            assert joblib.effective_n_jobs(-1) == 3
            on_pool = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert on_pool.best_params_ == here.best_params_
    assert list(on_pool.cv_results_["mean_test_score"]) == list(here.cv_results_["mean_test_score"])
