"""Sweep scaling: the same K-member sweep trained one member after another and
with --workers N, side by side in one run, timed end to end as a user runs it
(train.py in a subprocess: start-up, training, evaluation, frames, grid, page).

    python bench/sweep_scaling.py --data-dir <folder with MNIST/raw>
    python bench/sweep_scaling.py --data-dir <MNIST> --workers 1,2,4,8 --members 8   # a bigger machine

Members differ by seed only, so every member does the same work. The sides run
one after another, never at the same time; compare them as ratios (speed-up =
time with 1 worker / time with N), which carry over between machines of one
type better than seconds do. Also checks that every side gave each member the
same metrics (the epoch time column aside).
"""

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                flags = open("/proc/cpuinfo").read()
                kind = "AVX512-BF16" if "avx512_bf16" in flags else "AVX512" if "avx512f" in flags else "AVX2"
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores, {kind})"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def metrics_without_time(sweep_dir: Path) -> dict:
    found = {}
    for path in sorted(sweep_dir.glob("*/metrics.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            found[path.parent.name] = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(handle)]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--members", type=int, default=4, help="members in the sweep (default 4; seeds 0..K-1)")
    parser.add_argument("--train-images", type=int, default=3000, help="training images per member (default 3000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per member (default 2)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare (default 1,2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    counts = [int(text) for text in args.workers.split(",")]
    seeds = ",".join(str(seed) for seed in range(args.members))
    print(f"{args.members} members x {args.epochs} epochs x {args.train_images} images, full test set, "
          f"device {args.device}; {cpu_name()}", flush=True)
    results, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            out = Path(tmp) / f"w{count}"
            command = [sys.executable, str(REPO / "train.py"), "--data-dir", args.data_dir, "--train-subset",
                       str(args.train_images), "--epochs", str(args.epochs), "--device", args.device,
                       "--sweep", f"seed={seeds}", "--output-dir", str(out), "--run-name", "s", "--workers", str(count)]
            started = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                return 1
            metrics = metrics_without_time(out / "s")
            same = reference is None or metrics == reference
            reference = reference or metrics
            results.append((count, seconds, same))
            print(f"workers {count}: {seconds:.1f} s", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    base = results[0][1]
    print("\n| workers | wall time (s) | speed-up vs 1 worker | same metrics per member |")
    print("| --- | --- | --- | --- |")
    for count, seconds, same in results:
        print(f"| {count} | {seconds:.1f} | {base / seconds:.2f}x | {'yes' if same else 'NO'} |")
    return 0 if all(same for _, _, same in results) else 1


if __name__ == "__main__":
    sys.exit(main())
