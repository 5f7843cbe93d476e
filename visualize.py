"""Turn saved embeddings into frames (PNG) and the animated GIF.

Training only saves numbers (`embeddings/epoch_007.npz`); everything drawn
comes from here, so a run can be redrawn with other options without
retraining:

    python visualize.py outputs/<run>                 # every frame + features.gif
    python visualize.py outputs/<run> --split test --max-points 20000 --duration-ms 120
"""

import argparse
import functools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from runfiles import atomic_path

SPLITS = ("train", "test")
# Colour-blind-safe, one fixed colour per digit for the whole run (matplotlib's tab10).
DIGIT_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
OUTLIER_QUANTILE = 0.002  # per side: a few stray points must not shrink the clusters to dots
LIMIT_PADDING = 0.08


# ---------- saving and loading embeddings ----------

def save_embeddings(path: Path, *, epoch: int, epochs: int, train_features, train_labels, test_features,
                    test_labels, centers, test_acc: float, title: str) -> np.ndarray:
    """Features are stored as float16 (about 0.35 MB per epoch for 70k 2-D
    points); `limits` (robust extent, from the fp32 values) lets the renderer
    fix the axes for a whole run without reading every point again."""
    arrays = dict(
        train_features=np.asarray(train_features, dtype=np.float16),
        train_labels=np.asarray(train_labels, dtype=np.uint8),
        test_features=np.asarray(test_features, dtype=np.float16),
        test_labels=np.asarray(test_labels, dtype=np.uint8),
        centers=np.asarray(centers, dtype=np.float32),
        limits=robust_limits(np.concatenate([train_features[:, :2], test_features[:, :2]]), np.asarray(centers)[:, :2]),
        epoch=np.int32(epoch), epochs=np.int32(epochs), test_acc=np.float32(test_acc), title=np.str_(title),
    )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return arrays["limits"]


def load_embeddings(path: Path) -> dict:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def robust_limits(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[xmin, xmax, ymin, ymax] covering all but the outermost 0.2% of points per side, and every center."""
    points = np.asarray(points, dtype=np.float32)
    low = np.quantile(points, OUTLIER_QUANTILE, axis=0)
    high = np.quantile(points, 1.0 - OUTLIER_QUANTILE, axis=0)
    low, high = np.minimum(low, centers.min(axis=0)), np.maximum(high, centers.max(axis=0))
    return np.array([low[0], high[0], low[1], high[1]], dtype=np.float32)


def square_limits(limits: Sequence[np.ndarray]) -> np.ndarray:
    """One padded, square box around the union of several epochs' limits, so
    that equal aspect fills the panel and the frames share one scale."""
    limits = np.asarray(limits, dtype=np.float64).reshape(-1, 4)
    x0, x1 = limits[:, 0].min(), limits[:, 1].max()
    y0, y1 = limits[:, 2].min(), limits[:, 3].max()
    half = max(x1 - x0, y1 - y0, 1e-6) * (0.5 + LIMIT_PADDING)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - half, cx + half, cy - half, cy + half])


# ---------- one frame ----------

class FrameRenderer:
    """One figure reused for every frame: per-digit artists get new data, the
    figure is never rebuilt (that is most of matplotlib's cost per frame)."""

    def __init__(self, splits: Sequence[str] = SPLITS):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D

        self.splits = tuple(splits)
        self.fig, axes = plt.subplots(1, len(self.splits), figsize=(5.6 * len(self.splits) + 1.6, 6.0), dpi=80,
                                      squeeze=False)
        self.axes = dict(zip(self.splits, axes[0]))
        self.points, self.centers = {}, {}
        for split, ax in self.axes.items():
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("feature 1")
            ax.set_ylabel("feature 2")
            ax.grid(True, linewidth=0.4, alpha=0.4)
            # Line2D markers, one artist per digit: much faster than scatter for 60k points.
            self.points[split] = [ax.plot([], [], linestyle="none", marker=".", markersize=1.6, alpha=0.45,
                                          color=colour, rasterized=True)[0] for colour in DIGIT_COLOURS]
            # Centers sit on clusters of their own colour: a thick black outline keeps them visible.
            self.centers[split] = ax.scatter(np.zeros(10), np.zeros(10), s=260, marker="*", c=DIGIT_COLOURS,
                                             edgecolors="black", linewidths=1.8, zorder=5)
        handles = [Line2D([], [], linestyle="none", marker="o", markersize=8, color=c, label=str(d))
                   for d, c in enumerate(DIGIT_COLOURS)]
        handles.append(Line2D([], [], linestyle="none", marker="*", markersize=13, markerfacecolor="white",
                              markeredgecolor="black", label="center"))
        self.fig.legend(handles=handles, loc="center right", title="digit", frameon=False)
        self.title = self.fig.suptitle("")
        self.fig.subplots_adjust(left=0.06, right=1.0 - 1.3 / self.fig.get_figwidth(), top=0.86, bottom=0.1, wspace=0.25)

    def draw(self, emb: dict, limits: np.ndarray, out_path: Path, max_points: Optional[int] = None) -> None:
        for split in self.splits:
            features, labels = emb[f"{split}_features"], emb[f"{split}_labels"]
            if max_points is not None and len(labels) > max_points:
                # Same subset every epoch (embeddings are stored in dataset order), so points do not flicker.
                keep = np.random.default_rng(0).choice(len(labels), max_points, replace=False)
                features, labels = features[keep], labels[keep]
            for digit, line in enumerate(self.points[split]):
                mine = features[labels == digit]
                line.set_data(mine[:, 0], mine[:, 1])
            self.centers[split].set_offsets(emb["centers"][:, :2])
            ax = self.axes[split]
            ax.set_xlim(limits[0], limits[1])
            ax.set_ylim(limits[2], limits[3])
            ax.set_title(f"{split} ({len(labels):,} points)")
        self.title.set_text(str(emb["title"]))
        with atomic_path(out_path) as tmp:
            self.fig.savefig(tmp, format="png")


@functools.lru_cache(maxsize=4)
def _renderer(splits: tuple) -> FrameRenderer:
    """One renderer per worker process and split choice."""
    return FrameRenderer(splits)


def render_frame(npz_path, png_path, limits, splits: Sequence[str] = SPLITS, max_points: Optional[int] = None,
                 delete_npz: bool = False) -> str:
    """Draw one saved epoch; `delete_npz` for embeddings kept only long enough to draw them."""
    _renderer(tuple(splits)).draw(load_embeddings(Path(npz_path)), np.asarray(limits), Path(png_path), max_points)
    if delete_npz:
        os.remove(npz_path)
    return str(png_path)


class BackgroundRenderer:
    """Draws frames in worker processes so training never waits for matplotlib.
    A worker uses one thread: it must not take the cores training runs on."""

    def __init__(self, workers: int = 1):
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_quiet_worker)
        self.pending = []

    def submit(self, *args, **kwargs) -> None:
        self.pending.append(self.pool.submit(render_frame, *args, **kwargs))

    def wait(self) -> list:
        done = [future.result() for future in self.pending]
        self.pending = []
        return done

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


def _quiet_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import signal
    import threading
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A trainer killed with SIGKILL cannot stop its pool: workers notice it is gone and leave."""
    import time
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


# ---------- whole runs ----------

def embedding_files(run_dir: Path) -> list:
    return sorted((Path(run_dir) / "embeddings").glob("epoch_*.npz"))


def run_limits(files: Sequence[Path]) -> np.ndarray:
    """Square limits over every saved epoch (reads only each file's `limits`)."""
    per_epoch = []
    for path in files:
        with np.load(path) as npz:
            per_epoch.append(npz["limits"])
    return square_limits(per_epoch)


def redraw(run_dir: Path, *, splits: Sequence[str] = SPLITS, max_points: Optional[int] = None,
           renderer: Optional[BackgroundRenderer] = None) -> list:
    """Redraw every frame that has saved embeddings with one set of axis
    limits for the whole run. Returns the frame paths in epoch order."""
    run_dir = Path(run_dir)
    files = embedding_files(run_dir)
    if not files:
        return []
    limits = run_limits(files)
    (run_dir / "frames").mkdir(exist_ok=True)
    pngs = [run_dir / "frames" / (path.stem + ".png") for path in files]
    own = renderer is None
    renderer = renderer or BackgroundRenderer(workers=max(1, min(len(files) // 8, (os.cpu_count() or 1))))
    try:
        for npz, png in zip(files, pngs):
            renderer.submit(str(npz), str(png), limits, tuple(splits), max_points)
        renderer.wait()
    finally:
        if own:
            renderer.close()
    return pngs


def write_gif(frame_paths: Sequence[Path], gif_path: Path, *, duration_ms: int = 200, hold_last_ms: int = 1500) -> None:
    """An endlessly looping GIF. All frames are mapped onto one palette taken
    from the first, middle and last frame: Pillow then skips its per-frame
    colour quantisation (most of a GIF's write time) and colours stay stable."""
    import imageio.v3 as iio
    from PIL import Image

    frames = [iio.imread(path)[..., :3] for path in frame_paths]
    if not frames:
        raise ValueError("no frames to put in a GIF")
    sample = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=0)
    palette = Image.fromarray(sample).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    indexed = np.stack([np.asarray(Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE))
                        for f in frames])
    durations = [duration_ms] * (len(frames) - 1) + [hold_last_ms]
    if len(durations) == 1:
        durations = durations[0]  # Pillow takes a list only for several frames
    with atomic_path(gif_path) as tmp:
        # The pillow plugin takes durations in milliseconds; loop=0 loops forever.
        iio.imwrite(tmp, indexed, extension=".gif", plugin="pillow", mode="P", palette=palette.getpalette()[:768],
                    duration=durations, loop=0, optimize=False)


def make_gif(run_dir: Path, *, splits: Sequence[str] = SPLITS, max_points: Optional[int] = None,
             duration_ms: int = 200, hold_last_ms: int = 1500, renderer: Optional[BackgroundRenderer] = None) -> Optional[Path]:
    """Redraw the frames with run-wide limits, then write `features.gif`."""
    pngs = redraw(run_dir, splits=splits, max_points=max_points, renderer=renderer)
    if not pngs:
        return None
    gif = Path(run_dir) / "features.gif"
    write_gif(pngs, gif, duration_ms=duration_ms, hold_last_ms=hold_last_ms)
    return gif


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Redraw a run's frames and GIF from its saved embeddings.")
    parser.add_argument("run_dir", type=Path, help="a run folder, e.g. outputs/20261123-120000-default")
    parser.add_argument("--split", choices=("both", "train", "test"), default="both", help="which panels to draw (default: both)")
    parser.add_argument("--max-points", type=int, default=None, help="at most this many points per panel (default: all)")
    parser.add_argument("--duration-ms", type=int, default=None, help="GIF milliseconds per frame (default: the run's config)")
    parser.add_argument("--hold-last-ms", type=int, default=None, help="GIF milliseconds for the last frame (default: the run's config)")
    args = parser.parse_args(argv)
    if not embedding_files(args.run_dir):
        print(f"error: no embeddings/epoch_*.npz in {args.run_dir}; pass a run folder made by train.py", file=sys.stderr)
        return 2
    import yaml
    saved = {}
    if (args.run_dir / "config.yaml").is_file():
        saved = yaml.safe_load((args.run_dir / "config.yaml").read_text()) or {}
    splits = SPLITS if args.split == "both" else (args.split,)
    max_points = args.max_points if args.max_points is not None else saved.get("frame_max_points")
    gif = make_gif(args.run_dir, splits=splits, max_points=max_points,
                   duration_ms=args.duration_ms or saved.get("frame_duration_ms", 200),
                   hold_last_ms=args.hold_last_ms or saved.get("gif_hold_last_ms", 1500))
    print(f"redrew {len(embedding_files(args.run_dir))} frames in {args.run_dir / 'frames'}; wrote {gif}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
