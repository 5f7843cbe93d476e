"""bench/gpu_check.py's CPU-safe parts: its argument checks, the plan, the folder and
the summary. What it measures needs a GPU and runs on one."""

import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402  (a script in bench/, not a package)


@pytest.fixture
def mnist_dir(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    return tmp_path / "mnist"


@pytest.mark.parametrize("argv, said", [
    (["--data-dir", "nowhere"], "no MNIST in nowhere"),
    (["--steps", "cuda_tests,warp_drive"], "unknown step warp_drive"),
    (["--budget-s", "0"], "--budget-s must be above 0"),
])
def test_bad_arguments_are_one_line(mnist_dir, capsys, argv, said):
    argv = argv if argv[0] == "--data-dir" else ["--data-dir", str(mnist_dir), *argv]
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err


def test_a_dry_run_writes_the_plan_and_an_empty_summary(mnist_dir, tmp_path, capsys):
    out = tmp_path / "check"
    assert gpu_check.main(["--data-dir", str(mnist_dir), "--out", str(out), "--dry-run"]) == 0
    plan = (out / "plan.txt").read_text(encoding="utf-8")
    for step in gpu_check.STEPS:
        assert f"{step} (at most" in plan
    assert plan.count("--device cuda") == 8 and "--cuda-graphs on --bf16 on" in plan and "seed=0,1,2" in plan
    assert "--workers 1,2,4,8" in plan and str(mnist_dir.resolve()) in plan
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.count("not run (dry run)") == len(gpu_check.STEPS) and summary in capsys.readouterr().out
    assert sum(limit for limit, _ in gpu_check.STEPS.values()) <= 500  # about the 8 minutes the check may take


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_it_refuses_in_one_line_before_running_anything(mnist_dir, tmp_path, capsys):
    out = tmp_path / "check"
    assert gpu_check.main(["--data-dir", str(mnist_dir), "--out", str(out)]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err and not (out / "runs").exists()


def test_the_summary_keeps_what_was_measured(tmp_path):
    rows = [("cuda_tests", "passed", "3 passed"), ("epoch_speed", "timed out", "—")]
    text = gpu_check.write_summary(tmp_path, rows, "GPU check | a card")
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") == text
    assert "| cuda_tests |" in text and "| timed out |" in text and text.startswith("GPU check | a card")
