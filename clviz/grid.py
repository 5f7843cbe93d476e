"""The sweep's grid: one panel per member (its test features), one picture per
epoch with a shared epoch counter, stitched into grid.gif; grid.png is the
final epoch. Drawn from the members' saved embeddings, so
`python visualize.py outputs/<sweep>` can redo it without retraining.

Layout: the first sweep axis runs across the columns, every combination of
the other axes gets a row; a single long axis wraps after five panels. A
`seed` axis is replication, not a condition: the grid shows the first seed
only (results.md gives mean ± std over all of them).
"""

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from clviz import frames, runfiles
from clviz.background import BackgroundRenderer
from clviz.config import Config
from clviz.gif import write_gif
from clviz.runfiles import atomic_path

PANEL_INCHES = 3.1
MAX_COLUMNS = 5


def grid_members(meta: dict) -> dict:
    """The sweep's meta with only the members the grid shows (first seed of a seed axis)."""
    axes = [axis for axis in meta["axes"] if axis["key"] != "seed" or len(meta["axes"]) == 1]
    if len(axes) == len(meta["axes"]):
        return meta
    first_seed = next(axis["values"][0] for axis in meta["axes"] if axis["key"] == "seed")
    members = [{"name": m["name"], "values": {k: v for k, v in m["values"].items() if k != "seed"}}
               for m in meta["members"] if m["values"]["seed"] == first_seed]
    return {**meta, "axes": axes, "members": members, "seed_shown": first_seed}


def layout(meta: dict) -> tuple:
    axes = meta["axes"]
    count = len(meta["members"])
    if len(axes) == 1:
        columns = min(count, MAX_COLUMNS)
    else:
        columns = len(axes[0]["values"])
    return math.ceil(count / columns), columns


def position(meta: dict, index: int) -> int:
    """Flat panel index of member `index`: with several axes, the first axis
    (which varies slowest in the member list) picks the column."""
    if len(meta["axes"]) == 1:
        return index
    per_column = len(meta["members"]) // len(meta["axes"][0]["values"])
    column, row = divmod(index, per_column)
    return row * len(meta["axes"][0]["values"]) + column


def member_ratios(run_dir: Path) -> dict:
    """{epoch: intra/inter ratio as text} from the member's metrics.csv."""
    if not (run_dir / runfiles.METRICS).is_file():
        return {}
    return {int(row["epoch"]): f"{float(row['intra_inter_ratio']):.2f}" for row in runfiles.read_metrics(run_dir)
            if row.get("intra_inter_ratio")}


def value_text(value) -> str:
    """A sweep value as written in member names and labels."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _label(values: dict) -> str:
    return "  ".join(f"{'λ' if key == 'center_loss_weight' else key} = {value_text(value)}" for key, value in values.items())


def member_frames(sweep_dir: Path, member: dict) -> dict:
    """{epoch: npz path} and the member's fixed axis limits."""
    files = runfiles.embedding_files(Path(sweep_dir) / member["name"])
    return {runfiles.epoch_of(path): path for path in files}


def render_grid_frame(sweep_dir: str, meta: dict, epoch: int, last_epoch: int, plan: list, out_path: str,
                      max_points: Optional[int], regions: bool) -> str:
    """plan: per member (npz path or None, limits or None, stopped_text)."""
    rows, columns = layout(meta)
    # Constrained layout measures the two-line panel titles when the PNG is drawn, which keeps
    # them off the row above (tight_layout on a canvas-less Figure let them overlap it).
    fig = Figure(figsize=(PANEL_INCHES * columns + 1.2, PANEL_INCHES * rows + 0.9), dpi=80, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    dataset = ""
    for index, member in enumerate(meta["members"]):
        ax = axes.flat[position(meta, index)]
        ax.set_axis_on()
        npz, limits, note = plan[index]
        if npz is None:
            ax.set_title(f"{_label(member['values'])}\n{note or 'no epoch finished'}", fontsize=9)
            continue
        emb = runfiles.load_embeddings(Path(npz))
        dim = int(emb["centers"].shape[1])
        if dim > 3:  # the PCA plane its stored limits were taken in
            emb = frames.projected(emb)
        head = str(emb.get("head", "linear"))
        angular = frames.FrameOptions().view_for(head) == "angular"
        features, labels = frames.subset_points(emb["test_features"], emb["test_labels"], max_points)
        centers = emb["centers"][:, :2]
        if angular:
            features, centers = frames.unit_vectors(features), frames.unit_vectors(centers)
            limits = frames.ANGULAR_LIMITS
            frames.draw_unit_circle(ax)
        weight = emb.get("head_weight")
        ids = frames.class_ids(emb)
        colours = frames.class_colours(ids)
        if regions and weight is not None and weight.shape[1] == 2:
            predicted = frames.decision_regions(limits, head, weight, emb.get("head_bias"), resolution=160)
            frames.show_regions(ax, np.asarray(ids)[predicted], limits)
        for digit, colour in enumerate(colours):
            mine = features[labels == digit]
            ax.plot(mine[:, 0], mine[:, 1], linestyle="none", marker=".", markersize=1.0, alpha=0.4, color=colour,
                    rasterized=True)
        if "unknown_features" in emb:  # held-out classes: black crosses, as in the run's own frames
            unknown = frames.subset_points(emb["unknown_features"], emb["unknown_labels"], max_points)[0]
            unknown = frames.unit_vectors(unknown) if angular else unknown
            ax.plot(unknown[:, 0], unknown[:, 1], linestyle="none", marker="x", markersize=1.8, markeredgewidth=0.5,
                    alpha=0.5, color=frames.UNKNOWN_COLOUR, rasterized=True, zorder=3)
        ax.scatter(centers[:, 0], centers[:, 1], s=70, marker="*", c=colours, edgecolors="black",
                   linewidths=0.9, zorder=5)
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[2], limits[3])
        ax.set_aspect("equal", adjustable="box")
        view = " · features 1-2 of 3" if dim == 3 else " · PCA" if dim > 3 else ""
        ax.set_title(f"{_label(member['values'])}\ntest {float(emb['test_acc']):.2f}%{view}" + (f" · {note}" if note else ""),
                     fontsize=9)
        dataset = dataset or str(emb.get("dataset", ""))
    seed = f"  ·  seed {meta['seed_shown']} of each setting" if "seed_shown" in meta else ""
    fig.suptitle(f"epoch {epoch}/{last_epoch}  ·  test features" + (f"  ·  {dataset}" if dataset else "") + seed, fontsize=13)
    with atomic_path(Path(out_path)) as tmp:
        fig.savefig(tmp, format="png")
    return out_path


def make_grid(sweep_dir: Path, cfg: Config, newest_only: bool = False) -> Optional[Path]:
    """grid_frames/epoch_NNN.png for every epoch any member reached, grid.gif and grid.png,
    with the sweep's shared config `cfg` (grid_* and frame_regions).
    A member that stopped early (diverged, interrupted) keeps its last picture, marked so.
    `newest_only`: while members still train, only the newest epoch's picture and grid.png,
    drawn here (no GIF, no worker process)."""
    sweep_dir = Path(sweep_dir)
    meta = grid_members(runfiles.read_sweep_meta(sweep_dir))
    statuses = {row["member"]: row["status"] for row in runfiles.read_summary(sweep_dir)}
    member_files = [member_frames(sweep_dir, member) for member in meta["members"]]
    ratios = [member_ratios(sweep_dir / member["name"]) for member in meta["members"]]
    # Per member: one box for its whole run, or one per epoch (cfg.frame_axes), so that a member
    # whose clusters shrink tenfold stays readable next to one whose clusters do not.
    limits = [dict(zip(f, frames.frame_limits(list(f.values()), cfg.frame_axes))) if f else None for f in member_files]
    last_epoch = max((max(f) for f in member_files if f), default=0)
    if last_epoch == 0:
        return None
    out_dir = sweep_dir / "grid_frames"
    out_dir.mkdir(exist_ok=True)
    renderer = None if newest_only else BackgroundRenderer(workers=max(1, min(2, os.cpu_count() or 1)))
    pngs = []
    try:
        for epoch in range(last_epoch if newest_only else 1, last_epoch + 1):
            plan = []
            for member, available, member_limits, ratio in zip(meta["members"], member_files, limits, ratios):
                earlier = [e for e in available if e <= epoch]
                status = statuses.get(member["name"], "")
                if not earlier:
                    plan.append((None, None, f"{status} in epoch 1" if status == "diverged" else status))
                    continue
                shown = max(earlier)
                stopped = shown == max(available) and shown < epoch
                note = f"intra/inter {ratio[shown]}" if shown in ratio else ""
                if stopped:
                    note = f"epoch {shown}, training on" if status == "training" else f"{status or 'stopped'} after epoch {shown}"
                plan.append((str(available[shown]), member_limits[shown], note))
            png = out_dir / f"epoch_{epoch:03d}.png"
            job = (render_grid_frame, str(sweep_dir), meta, epoch, last_epoch, plan, str(png), cfg.grid_max_points,
                   cfg.frame_regions)
            if renderer is None:
                job[0](*job[1:])
            else:
                renderer.submit(*job)
            pngs.append(png)
        if renderer is not None:
            renderer.wait()
    finally:
        if renderer is not None:
            renderer.close()
    if newest_only:
        with atomic_path(sweep_dir / "grid.png") as tmp:
            tmp.write_bytes(pngs[-1].read_bytes())
        return sweep_dir / "grid.png"
    write_gif(pngs, sweep_dir / "grid.gif", duration_ms=cfg.grid_duration_ms, hold_last_ms=cfg.grid_hold_last_ms)
    with atomic_path(sweep_dir / "grid.png") as tmp:
        tmp.write_bytes(pngs[-1].read_bytes())
    return sweep_dir / "grid.gif"
