"""interactive.html: the test features of every saved epoch in a Plotly view
that zooms, pans, and in 3-D turns with the mouse; an epoch slider and a play
button; hovering a point gives its class, its index in the test set and its
distance to its class center (in the full feature space).

The same fixed random subset of test points is shown at every epoch, so a
point can be followed. Plotly's JavaScript is written once beside the page
(or, for a sweep's members, once in the sweep folder), never loaded from a
CDN: the page works from file:// with no network.
"""

from pathlib import Path
from typing import Optional

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from clviz import frames, runfiles
from clviz.config import Config

PAGE = "interactive.html"
PLOTLY_JS = "plotly.min.js"
MAX_POINTS = 3000  # test points per epoch
POINT_BUDGET = 150_000  # over all epochs, so a 150-epoch run stays a few MB: fewer points per epoch there


def shown_subset(count: int, epochs: int) -> np.ndarray:
    """Sorted indices of the test points shown, the same at every epoch."""
    size = min(count, MAX_POINTS, max(POINT_BUDGET // max(epochs, 1), 200))
    return np.sort(np.random.default_rng(0).choice(count, size, replace=False))


def epoch_traces(emb: dict, keep: np.ndarray, dim: int, angular: bool, projection,
                 keep_unknown: Optional[np.ndarray] = None) -> list:
    """One trace per class (points), one for the held-out classes (if any) and one for the
    centers, in drawing coordinates."""
    features = np.asarray(emb["test_features"], dtype=np.float64)[keep]
    labels = np.asarray(emb["test_labels"])[keep]
    centers = np.asarray(emb["centers"], dtype=np.float64)
    distance = np.linalg.norm(features - centers[labels], axis=1)  # full-dimensional, as the metrics
    unknown = None
    if "unknown_features" in emb:
        unknown = np.asarray(emb["unknown_features"], dtype=np.float64)[keep_unknown]
        unknown_labels = np.asarray(emb["unknown_labels"])[keep_unknown]
        nearest = np.linalg.norm(unknown[:, None, :] - centers[None], axis=2).min(axis=1)
    if projection is not None:
        features, centers = projection(features), projection(centers)
        unknown = None if unknown is None else projection(unknown)
    if angular:
        features, centers = frames.unit_rows(features), frames.unit_rows(centers)
        unknown = None if unknown is None else frames.unit_rows(unknown)
    ids = frames.class_ids(emb)
    names = [str(name) for name in emb.get("class_names", ids)]
    colours = frames.class_colours(ids)
    scatter = go.Scatter3d if dim == 3 else go.Scatter
    traces = []
    for digit, colour in enumerate(colours):
        mine = labels == digit
        coords = dict(x=features[mine, 0], y=features[mine, 1])
        if dim == 3:
            coords["z"] = features[mine, 2]
        traces.append(scatter(
            **coords, mode="markers", name=names[digit], legendgroup=names[digit],
            marker=dict(color=colour, size=3 if dim == 3 else 5, opacity=0.7),
            customdata=np.stack([keep[mine], distance[mine]], axis=1),
            hovertemplate=f"class {names[digit]}<br>test image %{{customdata[0]:d}}<br>"
                          "distance to its center %{customdata[1]:.3f}<extra></extra>"))
    if unknown is not None:
        coords = dict(x=unknown[:, 0], y=unknown[:, 1])
        if dim == 3:
            coords["z"] = unknown[:, 2]
        threshold = float(emb.get("open_threshold", np.inf))
        traces.append(scatter(
            **coords, mode="markers", name=frames.unknown_text(emb),
            marker=dict(symbol="x", color=frames.UNKNOWN_COLOUR, size=3 if dim == 3 else 5, opacity=0.7),
            customdata=np.stack([unknown_labels, nearest], axis=1),
            text=np.where(nearest > threshold, "rejected as unknown", "taken for a known class"),
            hovertemplate="unknown: class %{customdata[0]:d}, never trained on<br>distance to the nearest center "
                          f"%{{customdata[1]:.3f}} (threshold {threshold:.3f}): %{{text}}<extra></extra>"))
    coords = dict(x=centers[:, 0], y=centers[:, 1])
    if dim == 3:
        coords["z"] = centers[:, 2]
    traces.append(scatter(**coords, mode="markers", name="centers", text=names,
                          marker=dict(symbol="diamond" if dim == 3 else "star", size=8 if dim == 3 else 16,
                                      color=colours, line=dict(color="black", width=1.5)),
                          hovertemplate="center of class %{text}<extra></extra>"))
    return traces


def axis_ranges(traces_per_epoch: list, dim: int) -> list:
    """One [low, high] per axis over every epoch, padded, equal for all axes (fixed for the whole run)."""
    points = [np.stack([np.asarray(getattr(t, axis)) for axis in "xyz"[:dim]], axis=1)
              for traces in traces_per_epoch for t in traces if len(t.x)]
    return frames.cube_limits(points, dims=dim).reshape(-1, 2).tolist()


def write_interactive(run_dir: Path, cfg: Config, js_dir: Optional[Path] = None) -> Optional[Path]:
    """Write run_dir/interactive.html from the kept embeddings; Plotly's JavaScript goes
    into `js_dir` (default: the run folder) if it is not there yet. None without embeddings."""
    run_dir = Path(run_dir)
    files = runfiles.embedding_files(run_dir)
    if not files:
        return None
    js_dir = Path(js_dir or run_dir)
    last = runfiles.load_embeddings(files[-1])
    dim = int(last["centers"].shape[1])
    head = str(last.get("head", "linear"))
    angular = frames.FrameOptions.from_config(cfg).view_for(head) == "angular"
    projection = frames.run_projection(files)
    keep = shown_subset(len(last["test_labels"]), len(files))
    keep_unknown = shown_subset(len(last["unknown_labels"]), len(files)) if "unknown_labels" in last else None
    epochs = [runfiles.epoch_of(path) for path in files]
    traces = [epoch_traces(runfiles.load_embeddings(path), keep, dim, angular, projection, keep_unknown)
              for path in files]
    ranges = axis_ranges(traces, min(dim, 3) if dim <= 3 else 2)
    shown_dim = 3 if dim == 3 else 2
    what = "on the unit sphere" if angular and dim == 3 else "on the unit circle" if angular else \
        f"PCA of the {dim}-D features ({100 * projection.explained:.0f}% of the variance)" if projection else f"{dim}-D features"
    title = f"{run_dir.name}: test features ({len(keep):,} of {len(last['test_labels']):,} points, {what})"
    figure = go.Figure(data=traces[-1], frames=[go.Frame(data=t, name=str(e)) for t, e in zip(traces, epochs)])
    steps = [dict(method="animate", label=str(e), args=[[str(e)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                                        transition=dict(duration=0))]) for e in epochs]
    play = dict(label="play", method="animate",
                args=[None, dict(frame=dict(duration=400, redraw=True), transition=dict(duration=0), fromcurrent=True)])
    pause = dict(label="pause", method="animate", args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False))])
    layout = dict(title=dict(text=title, font=dict(size=14)), height=720, legend=dict(title="class", itemsizing="constant"),
                  uirevision="keep",  # zoom, pan and camera stay as the user set them while the epoch changes
                  sliders=[dict(active=len(epochs) - 1, steps=steps, currentvalue=dict(prefix="epoch "), pad=dict(t=40))],
                  updatemenus=[dict(type="buttons", buttons=[play, pause], direction="left", x=0, y=-0.08,
                                    xanchor="left", yanchor="top")])
    if shown_dim == 3:
        layout["scene"] = dict(aspectmode="cube", **{f"{axis}axis": dict(range=r, title=f"feature {k + 1}")
                                                     for k, (axis, r) in enumerate(zip("xyz", ranges))})
    else:
        names = ("PC 1", "PC 2") if projection is not None else ("feature 1", "feature 2")
        layout["xaxis"] = dict(range=ranges[0], title=names[0])
        layout["yaxis"] = dict(range=ranges[1], title=names[1], scaleanchor="x", scaleratio=1)
    figure.update_layout(**layout)
    script = Path(PLOTLY_JS) if js_dir == run_dir else Path("..") / PLOTLY_JS
    if not (js_dir / PLOTLY_JS).is_file():
        runfiles.write_text(js_dir / PLOTLY_JS, get_plotlyjs())
    page = figure.to_html(include_plotlyjs=str(script), full_html=True, include_mathjax=False,
                          config=dict(displaylogo=False, responsive=True), div_id="features", auto_play=False)
    out = run_dir / PAGE
    runfiles.write_text(out, page)
    return out
