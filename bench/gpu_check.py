"""The GPU check: everything the GPU path has to show, in one command of at most
about 8 minutes on one H100 or H200, into one folder, with a summary table.

    python bench/gpu_check.py --data-dir <folder with MNIST/raw>              # on the GPU machine
    python bench/gpu_check.py --data-dir <MNIST> --out gpu_check --budget-s 480
    python bench/gpu_check.py --data-dir <MNIST> --dry-run                    # anywhere: the plan, nothing run

It needs: this repository with its requirements installed (requirements-dev.txt,
for pytest), a CUDA build of PyTorch and one CUDA GPU, and full MNIST in
torchvision's layout (`<data-dir>/MNIST/raw/*-ubyte`). It installs nothing and
needs no network. Steps, each with its own time limit and its console in
`<out>/<step>.txt`:

  1. cuda_tests    the tests that skip without CUDA (graph replay vs eager steps, bf16 on the GPU)
  2. epoch_speed   one epoch of 60k images with CUDA graphs off/on and bf16 off/on (4 runs of 2
                   epochs; the second epoch's time counts), and configs/seed.yaml for 3 epochs:
                   its epoch time x 150 plus its measured start-up, frame and GIF cost
  3. best_3_seeds  configs/best.yaml on full MNIST, seeds 0, 1, 2 (test accuracy mean ± std)
  4. sweep_scaling bench/sweep_scaling.py: 8 members x 2 epochs with --workers 1/2/4/8 on one card
  5. plain_run     python train.py --device cuda --epochs 2, its frames, GIF and page

`<out>/summary.md` gets one row per step (passed, failed, timed out, skipped for
want of time) and its numbers; it is rewritten after every step, so a check cut
short still leaves what it measured.
"""

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# name: (seconds it may take at most, what it checks). No step starts with less than a third of its
# limit left of --budget-s, and each is cut at what is left, so the whole check ends within the budget.
STEPS = {
    "cuda_tests": (90, "tests that need CUDA: graph replay vs eager, bf16 on the GPU"),
    "epoch_speed": (130, "one 60k-image epoch, CUDA graphs off/on x bf16 off/on; seed.yaml x 150 estimated"),
    "best_3_seeds": (150, "configs/best.yaml, full MNIST, seeds 0-2: test accuracy"),
    "sweep_scaling": (80, "8 members x 2 epochs, --workers 1/2/4/8 on one card"),
    "plain_run": (50, "train.py --device cuda --epochs 2: frames, GIF, page"),
}
SPEED_CASES = {"graphs off, bf16 off": ("off", "off"), "graphs off, bf16 on": ("off", "on"),
               "graphs on, bf16 off": ("on", "off"), "graphs on, bf16 on": ("on", "on")}


class CheckError(Exception):
    """Bad arguments or a machine that cannot run the check; one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw/*-ubyte (full MNIST)")
    parser.add_argument("--out", default="gpu_check", help="folder for the consoles and summary.md (default gpu_check)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="stop starting steps once this many seconds have passed (default 480)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--dry-run", action="store_true", help="write the plan and an empty summary; run nothing")
    args = parser.parse_args(argv)
    raw = Path(args.data_dir).expanduser() / "MNIST" / "raw"
    if not raw.is_dir() or not list(raw.glob("*-ubyte")):
        raise CheckError(f"no MNIST in {args.data_dir} (expected {raw}/*-ubyte); pass --data-dir to full MNIST "
                         "in torchvision's layout")
    args.steps = [step.strip() for step in args.steps.split(",") if step.strip()]
    unknown = [step for step in args.steps if step not in STEPS]
    if unknown or not args.steps:
        raise CheckError(f"unknown step {unknown[0] if unknown else '(none given)'}; choose from {', '.join(STEPS)}")
    if args.budget_s <= 0:
        raise CheckError(f"--budget-s must be above 0, got {args.budget_s:g}")
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    args.out = Path(args.out)
    return args


def commands(step: str, args, work: Path) -> list:
    """The commands one step runs (each a list for subprocess), in order."""
    train = [PY, str(REPO / "train.py"), "--data-dir", args.data_dir, "--device", "cuda", "--output-dir", str(work)]
    if step == "cuda_tests":
        return [[PY, "-m", "pytest", "-q", "-rs", "-k", "gpu or cuda or accelerator", str(REPO / "tests" / "test_training.py"),
                 str(REPO / "tests" / "test_library.py")]]
    if step == "epoch_speed":
        runs = [[*train, "--epochs", "2", "--lr-schedule", "step", "--cuda-graphs", graphs, "--bf16", bf16,
                 "--run-name", f"speed-graphs-{graphs}-bf16-{bf16}"] for graphs, bf16 in SPEED_CASES.values()]
        return runs + [[*train, "--config", str(REPO / "configs" / "seed.yaml"), "--epochs", "3", "--run-name", "seed3"]]
    if step == "best_3_seeds":
        return [[*train, "--config", str(REPO / "configs" / "best.yaml"), "--sweep", "seed=0,1,2", "--workers", "3",
                 "--run-name", "best"]]
    if step == "sweep_scaling":
        return [[PY, str(REPO / "bench" / "sweep_scaling.py"), "--data-dir", args.data_dir, "--device", "cuda",
                 "--members", "8", "--epochs", "2", "--train-images", "10000", "--workers", "1,2,4,8"]]
    return [[*train, "--epochs", "2", "--run-name", "plain"]]


def epoch_seconds(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        return [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]


def findings(step: str, work: Path, console: str, walls: list) -> str:
    """The step's numbers, read back from what its commands wrote."""
    if step == "cuda_tests":
        return next((line for line in reversed(console.splitlines()) if " passed" in line or " failed" in line
                     or " skipped" in line), "no pytest summary")
    if step == "epoch_speed":
        parts = [f"{name}: {epoch_seconds(work / f'speed-graphs-{g}-bf16-{b}')[-1]:.2f} s"
                 for name, (g, b) in SPEED_CASES.items()]
        seed = epoch_seconds(work / "seed3")
        overhead = walls[-1] - sum(seed)  # start-up, frames not hidden by training, the GIF
        parts.append(f"seed.yaml x 150 ≈ {(150 * statistics.median(seed[1:]) + overhead) / 60:.1f} min "
                     f"({statistics.median(seed[1:]):.2f} s per epoch, {overhead:.0f} s start-up and drawing)")
        return "; ".join(parts)
    if step == "best_3_seeds":
        with open(work / "best" / "summary.csv", newline="", encoding="utf-8") as handle:
            accs = [float(row["test_acc"]) for row in csv.DictReader(handle) if row["status"] == "finished"]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        return f"test acc {statistics.mean(accs):.2f}{spread}% over {len(accs)} seeds ({walls[0]:.0f} s)"
    if step == "sweep_scaling":
        return " ".join(line for line in console.splitlines() if line.startswith("|") and "worker" in line)[:400] \
            or "see the console"
    run_dir = work / "plain"
    frames = len(list((run_dir / "frames").glob("epoch_*.png")))
    made = [name for name in ("features.gif", "index.html", "interactive.html") if (run_dir / name).is_file()]
    if frames != 2 or len(made) != 3:
        raise CheckError(f"{frames} frames and {', '.join(made) or 'none'} of features.gif, index.html, interactive.html")
    return f"2 frames, {', '.join(made)} ({walls[0]:.0f} s)"


def write_summary(out: Path, rows: list, header: str) -> str:
    lines = [header, "", "| step | checks | result | numbers |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {STEPS[name][1]} | {status} | {numbers} |" for name, status, numbers in rows]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    return text


def gpu_name() -> str:
    """The card, or a CheckError: the check measures a GPU and nothing else."""
    import torch
    if not torch.cuda.is_available():
        raise CheckError("no CUDA GPU here (torch.cuda.is_available() is False); run it on the GPU machine, "
                         "or pass --dry-run to see the plan")
    return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def run_check(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "runs"
    plan = [f"{step} (at most {STEPS[step][0]} s):\n" + "\n".join("  " + " ".join(cmd) for cmd in commands(step, args, work))
            for step in args.steps]
    (args.out / "plan.txt").write_text("\n".join(plan) + "\n", encoding="utf-8")
    if args.dry_run:
        rows = [(step, "not run (dry run)", "—") for step in args.steps]
        print(write_summary(args.out, rows, f"GPU check plan ({time.strftime('%Y-%m-%d')}); nothing was run"))
        return 0
    header = f"GPU check {time.strftime('%Y-%m-%d %H:%M')} | {gpu_name()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    started, rows, failed = time.perf_counter(), [], False
    for step in args.steps:
        limit = STEPS[step][0]
        left = args.budget_s - (time.perf_counter() - started)
        if left < limit / 3:
            rows.append((step, "skipped (time budget spent)", "—"))
            continue
        console, walls, status = [], [], "passed"
        for cmd in commands(step, args, work):
            begun = time.perf_counter()
            try:
                proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=min(limit, left))
            except subprocess.TimeoutExpired as err:
                console.append(f"$ {' '.join(cmd)}\n{err.stdout or ''}{err.stderr or ''}\n[timed out]")
                status = "timed out"
                break
            walls.append(time.perf_counter() - begun)
            console.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]")
            if proc.returncode != 0:
                status = f"failed (exit {proc.returncode})"
                break
        text = "\n".join(console)
        (args.out / f"{step}.txt").write_text(text, encoding="utf-8")
        numbers = "—"
        if status == "passed":
            try:
                numbers = findings(step, work, text, walls)
            except (CheckError, OSError, KeyError, ValueError, statistics.StatisticsError) as err:
                status, numbers = "failed (its files)", str(err)
        failed |= status != "passed"
        rows.append((step, status, numbers.replace("|", "/")))
        write_summary(args.out, rows, header)
    print(write_summary(args.out, rows, header))
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 1 if failed else 0


def main(argv=None) -> int:
    try:
        return run_check(parse_args(argv))
    except CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; what was measured is in summary.md", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
