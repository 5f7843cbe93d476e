"""One frame: an epoch's saved embeddings drawn as a PNG.

Two views: `plane` draws the features as they are, with the classifier's
decision regions shaded behind them; `angular` (the default for the cosface
and arcface heads, whose logits ignore the radius) draws each feature's
direction on the unit circle and a histogram of the test angles per class.
The title is composed here from the npz's fields (epoch, accuracy, lambda,
head, dataset), never stored as text and parsed back.

3-D features (feat_dim 3) get a 3-D view (FrameRenderer3D): the camera turns
a few degrees per epoch; for margin heads every feature is put on the unit
sphere. Wider features are drawn as their first two principal components
(projection.py), the share of the variance they keep in the title.
"""

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the "3d" projection)
from PIL import Image

from clviz import runfiles
from clviz.config import Config
from clviz.data import NUM_CLASSES
from clviz.projection import Projection, fit_pca
from clviz.runfiles import atomic_path

SPLITS = ("train", "test")
# Colour-blind-safe, one fixed colour per digit for the whole run (matplotlib's tab10).
DIGIT_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
VIEWS = ("plane", "angular")
REGION_RESOLUTION = 240  # grid cells per side for the decision regions
REGION_ALPHA = 0.16
OUTLIER_QUANTILE = 0.002  # per side: a few stray points must not shrink the clusters to dots
LIMIT_PADDING = 0.08


# ---------- axis limits ----------

def inner_range(points: np.ndarray) -> tuple:
    """(low, high) per axis, leaving out the outermost OUTLIER_QUANTILE of the points on each side."""
    points = np.asarray(points, dtype=np.float32)
    return np.quantile(points, OUTLIER_QUANTILE, axis=0), np.quantile(points, 1.0 - OUTLIER_QUANTILE, axis=0)


def robust_limits(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[xmin, xmax, ymin, ymax] covering all but the outermost 0.2% of points per side, and every center."""
    low, high = inner_range(points)
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

def epoch_limits(train_features: np.ndarray, test_features: np.ndarray, centers: np.ndarray,
                 unknown_features: Optional[np.ndarray] = None) -> np.ndarray:
    """The `limits` an embeddings file stores: of the features as drawn in 2-D
    (for feat_dim > 3 projected by this epoch's own PCA; for 3-D the first two
    axes, which the 3-D view does not use). Held-out classes' features count too:
    where they land is what an open-set frame is for."""
    extra = [] if unknown_features is None else [unknown_features]
    points = np.concatenate([train_features, test_features, *extra]).astype(np.float32)
    if points.shape[1] > 3:
        projection = fit_pca(test_features)
        points, centers = projection(points), projection(centers)
    return robust_limits(points[:, :2], np.asarray(centers)[:, :2])


def cube_limits(point_sets: Sequence[np.ndarray], dims: int = 3) -> np.ndarray:
    """[x0, x1, y0, y1, z0, z1]: one padded cube around all but the outermost
    0.2% of the points per side (3-D frames); `dims` 2 gives the square."""
    low, high = inner_range(np.concatenate([np.asarray(p, dtype=np.float32)[:, :dims] for p in point_sets]))
    half = max(float((high - low).max()), 1e-6) * (0.5 + LIMIT_PADDING)
    middle = (low + high) / 2
    return np.array([value for m in middle for value in (m - half, m + half)])


def run_limits(files: Sequence[Path]) -> np.ndarray:
    """Square limits over every saved epoch (reads only each file's `limits`)."""
    return square_limits([runfiles.read_limits(path) for path in files])


def frame_limits(files: Sequence[Path], axes: str, projection: Optional[Projection] = None, dim: int = 2) -> list:
    """One box per file: the run's union ('run') or each epoch's own ('epoch').
    2-D: squares, from the stored limits. Projected (`projection`): squares of the
    projected points. 3-D: cubes for 'run'; None for 'epoch' (each frame fits its own)."""
    if dim == 3:
        if axes != "run":
            return [None] * len(files)
        cube = cube_limits([points for path in files for points in split_points(path)])
        return [cube] * len(files)
    if projection is not None:
        boxes = []
        for path in files:
            emb = runfiles.load_embeddings(path)
            points = np.concatenate([emb["train_features"], emb["test_features"]])
            boxes.append(robust_limits(projection(points), projection(emb["centers"])))
    else:
        boxes = [runfiles.read_limits(path) for path in files]
    if axes == "run":
        return [square_limits(boxes)] * len(files)
    return [square_limits([box]) for box in boxes]


def split_points(path: Path) -> list:
    emb = runfiles.load_embeddings(path)
    return [emb["train_features"], emb["test_features"], emb["centers"]]


def feature_dim(path: Path) -> int:
    return int(runfiles.load_embeddings(path)["centers"].shape[1])


def run_projection(files: Sequence[Path]) -> Optional[Projection]:
    """For feat_dim > 3: the PCA of the last epoch's test features, used for every frame of
    the final GIF, so no frame flips or turns against the next; None otherwise."""
    if not files or feature_dim(files[-1]) <= 3:
        return None
    return fit_pca(runfiles.load_embeddings(files[-1])["test_features"])


def projected(emb: dict, projection: Optional[Projection] = None) -> dict:
    """`emb` with its features, centers and class weights in the PCA plane
    (fitted on this epoch's test features unless `projection` is given), and a
    note for the title; the decision regions are not drawn in a projection."""
    dim = emb["centers"].shape[1]
    projection = projection or fit_pca(emb["test_features"])
    out = dict(emb)
    for split in SPLITS + (("unknown",) if "unknown_features" in emb else ()):
        out[f"{split}_features"] = projection(emb[f"{split}_features"]).astype(np.float32)
    out["centers"] = projection(emb["centers"]).astype(np.float32)
    out.pop("head_weight", None)
    out.pop("head_bias", None)
    out["projection_note"] = f"PCA of the {dim}-D features: {100 * projection.explained:.0f}% of the variance"
    return out


# ---------- decision regions ----------

def class_scores(points: np.ndarray, head: str, weight: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """The head's plain logits (no margin) for 2-D points (N, 2) -> (N, C), up to
    a positive factor: w_k . x + b_k for linear, cos(angle(x, w_k)) otherwise."""
    points = np.asarray(points, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if head == "linear":
        return points @ weight.T + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    unit = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    return unit @ (weight / np.linalg.norm(weight, axis=1, keepdims=True)).T


def decision_regions(limits, head: str, weight, bias=None, resolution: int = REGION_RESOLUTION) -> np.ndarray:
    """(resolution, resolution) predicted class on a grid over `limits`, row 0 at the bottom."""
    xs = np.linspace(limits[0], limits[1], resolution)
    ys = np.linspace(limits[2], limits[3], resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return class_scores(grid, head, weight, bias).argmax(axis=1).reshape(resolution, resolution)




def head_text(head: str, scale: float, margin: float) -> str:
    return "linear head" if head == "linear" else f"{head} s={scale:g} m={margin:g}"


def frame_title(emb: dict) -> str:
    """The title line of a frame, from the npz's fields. Files written before
    these fields existed carry their title as text; it is shown as it is."""
    if "dataset" not in emb and "title" in emb:
        return str(emb["title"])
    head = head_text(str(emb.get("head", "linear")), float(emb.get("head_scale", 1.0)), float(emb.get("head_margin", 0.0)))
    title = (f"epoch {int(emb['epoch'])}/{int(emb['epochs'])}  ·  test acc {float(emb['test_acc']):.2f}%  ·  "
             f"λ = {float(emb.get('center_loss_weight', float('nan'))):g}  ·  {emb.get('center_update', '?')} centers  ·  "
             f"{head}  ·  {emb.get('dataset', '')}")
    return title + (f"\n{emb['projection_note']}" if "projection_note" in emb else "")


@dataclass(frozen=True)
class FrameOptions:
    """How frames are drawn; the defaults are Config's (its one home)."""
    splits: tuple = SPLITS
    max_points: Optional[int] = Config.frame_max_points
    regions: bool = Config.frame_regions
    view: str = Config.frame_view  # plane, angular, or auto (angular for cosface/arcface)
    axes: str = Config.frame_axes  # epoch (each frame fits its epoch) or run (one box for the run)

    @classmethod
    def from_config(cls, cfg: Config, **changes) -> "FrameOptions":
        """From a run's Config; `changes` that are not None win (the redraw flags)."""
        values = dict(max_points=cfg.frame_max_points, regions=cfg.frame_regions, view=cfg.frame_view,
                      axes=cfg.frame_axes)
        values.update({key: value for key, value in changes.items() if value is not None})
        return cls(**values)

    def view_for(self, head: str) -> str:
        if self.view != "auto":
            return self.view
        return "plane" if head == "linear" else "angular"


ANGULAR_LIMITS = np.array([-1.3, 1.3, -1.3, 1.3])  # the unit circle with room for the stars


def draw_unit_circle(ax) -> None:
    circle = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(circle), np.sin(circle), color="black", linewidth=0.5, alpha=0.3, zorder=1)


def show_regions(ax, regions: np.ndarray, limits, visible: bool = True):
    """Class colours at low alpha behind everything else; returns the image artist."""
    return ax.imshow(regions, cmap=ListedColormap(DIGIT_COLOURS), vmin=-0.5, vmax=9.5, alpha=REGION_ALPHA,
                     origin="lower", interpolation="nearest", extent=tuple(limits), zorder=0, visible=visible,
                     aspect="auto")


def subset_points(features, labels, max_points):
    if max_points is not None and len(labels) > max_points:
        # Same subset every epoch (embeddings are stored in dataset order), so points do not flicker.
        keep = np.random.default_rng(0).choice(len(labels), max_points, replace=False)
        return features[keep], labels[keep]
    return features, labels


def unit_rows(vectors: np.ndarray, dims: Optional[int] = None) -> np.ndarray:
    """Each row scaled to length 1 (its first `dims` columns; all by default): the angular views."""
    vectors = np.asarray(vectors, dtype=np.float32)[:, :dims]
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


UNKNOWN_COLOUR = "black"  # held-out classes: one neutral style, no class colour


@dataclass(frozen=True)
class ClassKey:
    """What a frame's classes look like: their original numbers (colours), names and the
    unknowns' legend entry. Part of a renderer's cache key: its artists are built for them."""
    ids: tuple = tuple(range(NUM_CLASSES))
    names: tuple = tuple(map(str, range(NUM_CLASSES)))
    unknown: Optional[str] = None

    @classmethod
    def of(cls, emb: dict) -> "ClassKey":
        ids = class_ids(emb)
        names = tuple(str(n) for n in emb.get("class_names", ids))
        return cls(ids, names, unknown_text(emb))


def class_ids(emb: dict) -> tuple:
    """The original class number of each label (0..9 unless classes were held out)."""
    return tuple(int(k) for k in emb.get("class_ids", range(len(emb["centers"]))))


def class_colours(ids: Sequence[int]) -> list:
    """One fixed colour per original class, so a digit keeps its colour whatever is held out;
    past the ten digits' colours, tab20's (any number of classes can be drawn)."""
    extra = matplotlib.colormaps["tab20"]
    return [DIGIT_COLOURS[k] if k < len(DIGIT_COLOURS) else matplotlib.colors.to_hex(extra(k % 20)) for k in ids]


def unknown_text(emb: dict) -> Optional[str]:
    """The legend entry of the held-out classes, e.g. 'unknown (8, 9)'; None without them."""
    if "unknown_features" not in emb:
        return None
    return f"unknown ({', '.join(str(n) for n in emb.get('unknown_names', ()))})"


def threshold_rings(centers: np.ndarray, radius: float) -> tuple:
    """x, y of one circle of `radius` around each center (NaN between circles: one line artist)."""
    angle = np.r_[np.linspace(0, 2 * np.pi, 121), np.nan]
    xs = (centers[:, :1] + radius * np.cos(angle)).ravel()
    ys = (centers[:, 1:2] + radius * np.sin(angle)).ravel()
    return xs, ys


def class_legend(fig: Figure, names: Sequence[str], colours: Sequence[str], unknown: Optional[str] = None, rings: bool = False):
    """The legend every frame shares: one coloured dot per class, the center star and, with
    held-out classes, their black cross and the threshold rings, at the right."""
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=8, color=c, label=str(n))
               for n, c in zip(names, colours)]
    handles.append(Line2D([], [], linestyle="none", marker="*", markersize=13, markerfacecolor="white",
                          markeredgecolor="black", label="center"))
    if unknown:
        handles.append(Line2D([], [], linestyle="none", marker="x", markersize=7, markeredgewidth=1.6,
                              color=UNKNOWN_COLOUR, label=unknown))
        if rings:
            handles.append(Line2D([], [], linestyle="--", linewidth=1.0, color="#555555",
                                  label="known if inside\n(95% of known\ntest digits are)"))
    return fig.legend(handles=handles, loc="center right", title="class", frameon=False)


def label_and_save(fig: Figure, legend, title, emb: dict, out_path: Path, paint) -> None:
    """The tail every frame shares (2-D and 3-D): the legend's class names (e.g. Fashion-MNIST's),
    the title from the saved fields, `paint()` into the canvas, then the PNG, written whole."""
    for text, name in zip(legend.get_texts(), ClassKey.of(emb).names):
        text.set_text(name)
    title.set_text(frame_title(emb))
    paint()
    with atomic_path(out_path) as tmp:
        # zlib level 1: ~30 ms instead of ~45 ms at the default level 6, for ~5% more bytes.
        Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]).save(tmp, format="PNG", compress_level=1)


class FrameRenderer:
    """One figure reused for every frame: per-class artists get new data, the
    figure is never rebuilt (that is most of matplotlib's cost per frame).

    plane view: one panel per split, points, centers (stars), decision regions.
    angular view: the same panels with every feature scaled to unit length, and
    a third panel with the histogram of test angles per class; the dashed
    lines are the directions of the head's class weights.
    """

    def __init__(self, options: FrameOptions = FrameOptions(), view: str = "plane", classes: "ClassKey" = None):
        self.options, self.view = options, view
        self.classes = classes = classes or ClassKey()
        colours = class_colours(classes.ids)
        self.splits = tuple(options.splits)
        panels = len(self.splits) + (view == "angular")
        # A Figure with its own Agg canvas: no pyplot, so no global backend or figure registry.
        self.fig = Figure(figsize=(5.6 * panels + 1.6, 6.0), dpi=80)
        FigureCanvasAgg(self.fig)
        axes = self.fig.subplots(1, panels, squeeze=False)
        self.axes = dict(zip(self.splits, axes[0]))
        self.points, self.centers, self.regions, self.unknowns, self.rings = {}, {}, {}, {}, {}
        for split, ax in self.axes.items():
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("feature 1" if view == "plane" else "feature 1 / ‖feature‖")
            ax.set_ylabel("feature 2" if view == "plane" else "feature 2 / ‖feature‖")
            ax.grid(True, linewidth=0.4, alpha=0.4)
            # Hidden until a head's weights are known.
            self.regions[split] = show_regions(ax, np.zeros((2, 2)), (0, 1, 0, 1), visible=False)
            # Line2D markers, one artist per class: much faster than scatter for 60k points.
            # On the unit circle the points pile up along one line: bigger markers keep the colours readable.
            size = 1.6 if view == "plane" else 4.0
            self.points[split] = [ax.plot([], [], linestyle="none", marker=".", markersize=size, alpha=0.45,
                                          color=colour, rasterized=True, zorder=2)[0] for colour in colours]
            if classes.unknown and split == "test":
                # Held-out classes (test only): black crosses over the known points, so one sees at a
                # glance whether they land between the clusters or on top of one.
                self.unknowns[split] = ax.plot([], [], linestyle="none", marker="x", markersize=3.2 if view == "plane"
                                               else 4.5, markeredgewidth=0.7, alpha=0.6, color=UNKNOWN_COLOUR,
                                               rasterized=True, zorder=3)[0]
                self.rings[split] = ax.plot([], [], linestyle="--", linewidth=1.0, color="#555555", zorder=4)[0]
            # Centers sit on clusters of their own colour: a thick black outline keeps them visible.
            # Small enough not to hide a compact cluster (with center loss they get tight).
            self.centers[split] = ax.scatter(np.zeros(len(colours)), np.zeros(len(colours)), s=150, marker="*",
                                             c=colours, edgecolors="black", linewidths=1.8, zorder=5)
            if view == "angular":
                draw_unit_circle(ax)
        if view == "angular":
            self.hist_ax = axes[0][-1]
            self.hist_ax.set_xlabel("angle of the test features (degrees)")
            self.hist_ax.set_ylabel("share of the class's test features")
            self.hist_ax.set_xlim(-180, 180)
            self.hist_ax.set_xticks(range(-180, 181, 60))
            self.hist_ax.grid(True, linewidth=0.4, alpha=0.4)
            self.bins = np.linspace(-180, 180, 145)
            self.hists = [self.hist_ax.stairs(np.zeros(len(self.bins) - 1), self.bins, color=c, linewidth=1.2)
                          for c in colours]
            if classes.unknown:
                self.hists.append(self.hist_ax.stairs(np.zeros(len(self.bins) - 1), self.bins, color=UNKNOWN_COLOUR,
                                                      linewidth=1.4, linestyle=":"))
            self.weight_lines = [self.hist_ax.axvline(0, color=c, linestyle="--", linewidth=1.0) for c in colours]
        self.legend = class_legend(self.fig, classes.names, colours, classes.unknown,
                                   rings=bool(classes.unknown) and view == "plane")
        self.title = self.fig.suptitle("")
        self.fig.subplots_adjust(left=0.06 * 2 / panels, right=1.0 - 1.9 / self.fig.get_figwidth(), top=0.86,
                                 bottom=0.1, wspace=0.25)
        # What changes every frame; the rest (axes, ticks, labels, legend: most of the
        # text, which is most of matplotlib's time) is drawn once per set of limits and
        # titles, kept as a bitmap, and pasted under each frame.
        dynamic = [self.title]
        for split in self.splits:
            dynamic += [self.regions[split], *self.points[split], self.centers[split]]
            dynamic += [artist for artist in (self.unknowns.get(split), self.rings.get(split)) if artist is not None]
        if view == "angular":
            dynamic += self.hists + self.weight_lines
        self.dynamic = sorted(dynamic, key=lambda artist: artist.get_zorder())
        self.background, self.background_key = None, None

    def draw(self, emb: dict, limits: np.ndarray, out_path: Path) -> None:
        head = str(emb.get("head", "linear"))
        angular = self.view == "angular"
        if angular:
            limits = ANGULAR_LIMITS
        weight = emb.get("head_weight")
        for split in self.splits:
            features, labels = subset_points(emb[f"{split}_features"], emb[f"{split}_labels"], self.options.max_points)
            features = unit_rows(features, 2) if angular else features
            for digit, line in enumerate(self.points[split]):
                mine = features[labels == digit]
                line.set_data(mine[:, 0], mine[:, 1])
            centers = emb["centers"][:, :2]
            self.centers[split].set_offsets(unit_rows(centers, 2) if angular else centers)
            if split in self.unknowns:
                unknown = subset_points(emb["unknown_features"], emb["unknown_labels"], self.options.max_points)[0]
                unknown = unit_rows(unknown, 2) if angular else unknown
                self.unknowns[split].set_data(unknown[:, 0], unknown[:, 1])
                # The open-set threshold as a ring around each center: exact in the feature plane only.
                ring = not angular and "projection_note" not in emb and "open_threshold" in emb
                self.rings[split].set_visible(ring)
                if ring:
                    self.rings[split].set_data(*threshold_rings(centers, float(emb["open_threshold"])))
            ax = self.axes[split]
            ax.set_xlim(limits[0], limits[1])
            ax.set_ylim(limits[2], limits[3])
            unknown_count = f" + {len(emb['unknown_labels']):,} unknown" if split in self.unknowns else ""
            ax.set_title(f"{split} ({len(labels):,}{unknown_count} points)")
            if "projection_note" in emb:
                ax.set_xlabel("principal component 1")
                ax.set_ylabel("principal component 2")
            else:
                ax.set_xlabel("feature 1" if self.view == "plane" else "feature 1 / ‖feature‖")
                ax.set_ylabel("feature 2" if self.view == "plane" else "feature 2 / ‖feature‖")
            image = self.regions[split]
            show = self.options.regions and weight is not None and weight.shape[1] == 2
            image.set_visible(show)
            if show:
                image.set_data(np.asarray(self.classes.ids)[decision_regions(limits, head, weight, emb.get("head_bias"))])
                image.set_extent(tuple(limits))
        if angular:
            angles = np.degrees(np.arctan2(emb["test_features"][:, 1].astype(np.float32),
                                           emb["test_features"][:, 0].astype(np.float32)))
            top = 0.0
            groups = [angles[emb["test_labels"] == k] for k in range(len(self.classes.ids))]
            if self.classes.unknown:
                unknown = emb["unknown_features"].astype(np.float32)
                groups.append(np.degrees(np.arctan2(unknown[:, 1], unknown[:, 0])))
            for mine, stairs in zip(groups, self.hists):
                counts = np.histogram(mine, self.bins)[0] / max(len(mine), 1)
                stairs.set_data(counts)
                top = max(top, counts.max(initial=0.0))
            # Rounded up to a multiple of 0.05, so the axis (part of the cached background) rarely changes.
            self.hist_ax.set_ylim(0, max(np.ceil(top * 1.1 / 0.05) * 0.05, 0.05))
            for digit, line in enumerate(self.weight_lines):
                line.set_visible(weight is not None)
                if weight is not None:
                    line.set_xdata([np.degrees(np.arctan2(weight[digit, 1], weight[digit, 0]))] * 2)
        label_and_save(self.fig, self.legend, self.title, emb, out_path, paint=self.render)

    def render(self) -> None:
        """Paint the figure into the canvas: the cached background, then the
        dynamic artists on top (lowest zorder first). The shading therefore lies
        over the grid lines rather than under them; at its low alpha they show through."""
        canvas = self.fig.canvas
        key = tuple((tuple(np.round(ax.get_xlim() + ax.get_ylim(), 9)), ax.get_title(), ax.get_xlabel())
                    for ax in self.fig.axes)
        key += (tuple(text.get_text() for text in self.legend.get_texts()),)
        if key != self.background_key:
            shown = [artist.get_visible() for artist in self.dynamic]
            for artist in self.dynamic:
                artist.set_visible(False)
            canvas.draw()
            self.background, self.background_key = canvas.copy_from_bbox(Bbox(self.fig.bbox.get_points())), key
            for artist, visible in zip(self.dynamic, shown):
                artist.set_visible(visible)
        canvas.restore_region(self.background)
        for artist in self.dynamic:
            self.fig.draw_artist(artist)

    def pixels(self) -> np.ndarray:
        """(height, width, 3) uint8 RGB of what `render` painted."""
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3]


# ---------- 3-D features ----------

ELEVATION = 22.0  # degrees above the equator
AZIMUTH_START = -60.0  # matplotlib's default camera
AZIMUTH_STEP = 4.0  # degrees the camera turns per epoch, so the GIF shows the shape from several sides
POINTS_3D = 4000  # per panel: 3-D drawing sorts and projects every point; 2 x 4,000 keeps a frame under 0.3 s
SPHERE_LIMITS = np.array([-1.25, 1.25, -1.25, 1.25, -1.25, 1.25])


def azimuth_of(epoch: int) -> float:
    return AZIMUTH_START + AZIMUTH_STEP * (epoch - 1)


class FrameRenderer3D:
    """3-D frames: one 3-D panel per split, points per class, centers as stars.
    The angular view (margin heads) puts every feature and center on the unit
    sphere, drawn as a faint wire frame, with the directions of the head's
    class weights as dashed lines from the origin."""

    def __init__(self, options: FrameOptions = FrameOptions(), view: str = "plane", classes: "ClassKey" = None):
        self.options, self.view = options, view
        self.classes = classes = classes or ClassKey()
        colours = class_colours(classes.ids)
        self.splits = tuple(options.splits)
        panels = len(self.splits)
        self.fig = Figure(figsize=(5.6 * panels + 1.6, 6.0), dpi=80)
        FigureCanvasAgg(self.fig)
        self.axes, self.points, self.centers, self.weights, self.unknowns = {}, {}, {}, {}, {}
        for index, split in enumerate(self.splits):
            ax = self.fig.add_subplot(1, panels, index + 1, projection="3d")
            ax.set_box_aspect((1, 1, 1))
            for name, axis in zip(("feature 1", "feature 2", "feature 3"), (ax.xaxis, ax.yaxis, ax.zaxis)):
                axis.set_label_text(name if view == "plane" else f"{name} / ‖feature‖")
            self.axes[split] = ax
            self.points[split] = [ax.plot([], [], [], linestyle="none", marker=".", markersize=2.2, alpha=0.5,
                                          color=colour, rasterized=True)[0] for colour in colours]
            if classes.unknown and split == "test":
                self.unknowns[split] = ax.plot([], [], [], linestyle="none", marker="x", markersize=3.5,
                                               markeredgewidth=0.7, alpha=0.6, color=UNKNOWN_COLOUR, rasterized=True)[0]
            self.centers[split] = [ax.plot([], [], [], linestyle="none", marker="*", markersize=13, color=colour,
                                           markeredgecolor="black", markeredgewidth=1.4, zorder=5)[0]
                                   for colour in colours]
            if view == "angular":
                u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
                ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="black",
                                  linewidth=0.3, alpha=0.18)
                self.weights[split] = [ax.plot([], [], [], linestyle="--", linewidth=1.2, color=colour)[0]
                                       for colour in colours]
        self.legend = class_legend(self.fig, classes.names, colours, classes.unknown)
        self.title = self.fig.suptitle("")
        self.fig.subplots_adjust(left=0.02, right=1.0 - 1.9 / self.fig.get_figwidth(), top=0.86, bottom=0.04, wspace=0.08)

    def draw(self, emb: dict, limits: Optional[np.ndarray], out_path: Path, azimuth: Optional[float] = None) -> None:
        angular = self.view == "angular"
        cap = self.options.max_points or POINTS_3D
        drawn = {}
        for split in self.splits:
            features, labels = subset_points(np.asarray(emb[f"{split}_features"], dtype=np.float32),
                                             emb[f"{split}_labels"], cap)
            drawn[split] = (unit_rows(features) if angular else features, labels, len(emb[f"{split}_labels"]))
        centers = np.asarray(emb["centers"], dtype=np.float32)
        centers = unit_rows(centers) if angular else centers
        if angular:
            limits = SPHERE_LIMITS
        elif limits is None:
            limits = cube_limits([drawn[split][0] for split in self.splits] + [centers])
        weight = emb.get("head_weight")
        for split, (features, labels, total) in drawn.items():
            ax = self.axes[split]
            for digit, line in enumerate(self.points[split]):
                mine = features[labels == digit]
                line.set_data_3d(mine[:, 0], mine[:, 1], mine[:, 2])
            for digit, star in enumerate(self.centers[split]):
                star.set_data_3d(centers[digit:digit + 1, 0], centers[digit:digit + 1, 1], centers[digit:digit + 1, 2])
            if split in self.unknowns:
                unknown = subset_points(np.asarray(emb["unknown_features"], dtype=np.float32), emb["unknown_labels"],
                                        cap)[0]
                unknown = unit_rows(unknown) if angular else unknown
                self.unknowns[split].set_data_3d(unknown[:, 0], unknown[:, 1], unknown[:, 2])
            if angular:
                for digit, line in enumerate(self.weights[split]):
                    line.set_visible(weight is not None)
                    if weight is not None:
                        tip = 1.2 * unit_rows(np.asarray(weight, dtype=np.float32))[digit]
                        line.set_data_3d([0, tip[0]], [0, tip[1]], [0, tip[2]])
            ax.set_xlim(limits[0], limits[1])
            ax.set_ylim(limits[2], limits[3])
            ax.set_zlim(limits[4], limits[5])
            ax.view_init(elev=ELEVATION, azim=azimuth_of(int(emb["epoch"])) if azimuth is None else azimuth)
            shown = f"{len(labels):,} of {total:,} points" if len(labels) < total else f"{total:,} points"
            if split in self.unknowns:
                shown += f" + {len(emb['unknown_labels']):,} unknown"
            ax.set_title(f"{split} ({shown})" + (", on the unit sphere" if angular else ""))
        label_and_save(self.fig, self.legend, self.title, emb, out_path, paint=self.fig.canvas.draw)


@functools.lru_cache(maxsize=4)
def _renderer(options: FrameOptions, view: str, dim: int = 2, classes: ClassKey = ClassKey()):
    """One renderer per worker process, options, view, kind (2-D or 3-D) and set of classes."""
    return FrameRenderer3D(options, view, classes) if dim == 3 else FrameRenderer(options, view, classes)


def render_frame(npz_path, png_path, limits, options: FrameOptions = FrameOptions(), delete_npz: bool = False,
                 projection: Optional[Projection] = None, azimuth: Optional[float] = None) -> str:
    """Draw one saved epoch; `delete_npz` for embeddings kept only long enough to draw them.
    `limits`: a square [x0, x1, y0, y1], or for 3-D a cube [x0, x1, y0, y1, z0, z1] or None
    (the frame fits its own points). `projection`: the PCA for feat_dim > 3 (default: this
    epoch's own). `azimuth`: the 3-D camera's (default: turning with the epoch)."""
    emb = runfiles.load_embeddings(Path(npz_path))
    dim = int(emb["centers"].shape[1])
    view = options.view_for(str(emb.get("head", "linear")))
    if dim == 3:
        _renderer(options, view, 3, ClassKey.of(emb)).draw(emb, None if limits is None else np.asarray(limits),
                                                          Path(png_path), azimuth)
    else:
        if dim > 3:
            emb = projected(emb, projection)
        _renderer(options, view, 2, ClassKey.of(emb)).draw(emb, np.asarray(limits), Path(png_path))
    if delete_npz:
        os.remove(npz_path)
    return str(png_path)
