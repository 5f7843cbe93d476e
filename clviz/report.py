"""What a person opens after a run: metrics.png (the numbers per epoch, drawn)
and index.html (a page that works straight from disk, no server: the GIF, an
epoch slider over the frames, the metrics and the resolved config). Sweeps get
the same, with the grid and a table of the members.

    python visualize.py outputs/<run>     # also redraws these
"""

import html
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from sklearn.metrics import roc_curve

from clviz import metrics, runfiles
from clviz.runfiles import atomic_path

LINE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"]


def _column(rows: list, name: str):
    values = [row.get(name, "") for row in rows]
    if not values or any(v in ("", None) for v in values):
        return None
    return np.array([float(v) for v in values])


# ---------- metrics.png ----------

def draw_metrics(run_dir: Path) -> Path:
    """Accuracy and the intra/inter ratio on top (the two numbers to read), then
    the distances and the losses, one panel each. The ratio is scale-free: it
    falls only when clusters get more compact relative to their gaps, while the
    raw center loss can rise as the whole feature cloud spreads (README)."""
    rows = runfiles.read_metrics(run_dir)
    epoch = _column(rows, "epoch")
    beyond = _column(rows, "open_auroc") is not None or _column(rows, "verify_auc") is not None
    fig = Figure(figsize=(11, 11 if beyond else 7.5), dpi=80)
    axes = fig.subplots(3 if beyond else 2, 2)
    panels = [
        (axes[0, 0], "accuracy (%)", [("train_acc", "train (softmax)"), ("test_acc", "test (softmax)"),
                                      ("nearest_center_acc", "test (nearest center)")], False),
        (axes[0, 1], "intra / inter (lower = more compact)", [("intra_inter_ratio", "intra / inter (test)")], True),
        (axes[1, 0], "distance in feature space", [("intra", "intra: mean ‖x − c_y‖ (test)"),
                                                   ("inter", "inter: closest two centers")], True),
        (axes[1, 1], "loss", [("nll", "train NLL"), ("test_nll", "test NLL"), ("center_loss", "train center loss")], True),
    ]
    if beyond:  # held-out classes and verification pairs (README, "Why compactness matters")
        panels += [
            (axes[2, 0], "AUROC (1 = perfect, 0.5 = chance)",
             [("open_auroc", "unknown vs known, by distance to nearest center"),
              ("open_auroc_softmax", "unknown vs known, by max softmax"),
              ("verify_auc", "verification pairs, cosine")], False),
            (axes[2, 1], "%", [("open_tnr95", "unknowns rejected at 95% knowns kept"),
                               ("verify_eer", "verification equal error rate (cosine)"),
                               ("verify_tar_at_far1e-3", "verification TAR at FAR 0.1%")], False),
        ]
    for ax, ylabel, series, log in panels:
        ratio = ax is axes[0, 1]
        ax.set_visible(any(_column(rows, name) is not None for name, _ in series) or ax in axes[:2].flat)
        for (name, label), colour in zip(series, LINE_COLOURS):
            values = _column(rows, name)
            if values is None:
                continue
            if log and (values > 0).all():
                set_log_scale(ax)
            ax.plot(epoch, values, marker="o", markersize=5 if ratio else 3, linewidth=2.5 if ratio else 1.5,
                    color="black" if ratio else colour, label=label)
        _epoch_axis(ax)
        ax.set_ylabel(ylabel, fontweight="bold" if ratio else "normal")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{Path(run_dir).name}: metrics per epoch")
    return _save(fig, Path(run_dir) / "metrics.png")


def draw_sweep_metrics(sweep_dir: Path, members: list) -> Path:
    """Test accuracy and intra/inter ratio per epoch, one line per member."""
    fig = Figure(figsize=(13, 5), dpi=80)
    acc_ax, ratio_ax = fig.subplots(1, 2)
    cmap = colormaps["viridis" if len(members) > 10 else "tab10"]
    for index, member in enumerate(members):
        member_dir = Path(sweep_dir) / member["name"]
        if not (member_dir / runfiles.METRICS).is_file():
            continue
        rows = runfiles.read_metrics(member_dir)
        colour = cmap(index / max(len(members) - 1, 1)) if len(members) > 10 else cmap(index)
        epoch = _column(rows, "epoch")
        for ax, name in ((acc_ax, "test_acc"), (ratio_ax, "intra_inter_ratio")):
            values = _column(rows, name)
            if values is not None:
                ax.plot(epoch, values, marker="o", markersize=3, color=colour, label=member["name"])
    acc_ax.set_ylabel("test accuracy (%)")
    ratio_ax.set_ylabel("intra / inter (lower = more discriminative)")
    set_log_scale(ratio_ax)
    for ax in (acc_ax, ratio_ax):
        _epoch_axis(ax)
    if acc_ax.lines:
        ratio_ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"{Path(sweep_dir).name}: every member")
    return _save(fig, Path(sweep_dir) / "metrics.png")


# ---------- roc.png: the last epoch's unknowns and verification pairs ----------

def open_set_curve(emb: dict, by: str = "distance") -> tuple:
    """(false-positive rate, true-positive rate) of unknown vs known from an epoch's stored
    scores: by the distance to the nearest center or by 1 - the max softmax probability."""
    if by == "distance":
        known, unknown = emb["open_known_distance"], emb["open_unknown_distance"]
    else:
        known, unknown = 1.0 - emb["open_known_confidence"], 1.0 - emb["open_unknown_confidence"]
    truth = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    fpr, tpr, _ = roc_curve(truth, np.r_[known, unknown])
    return fpr, tpr


def with_pairs(run_dir: Path, emb: Optional[dict]) -> Optional[dict]:
    """`emb` with its verification pairs' truth and scores (pair_same, pair_cosine, pair_l2),
    recomputed from the run's verify_pairs.npz and the epoch's stored features; `emb` as
    it is when the run has no pairs."""
    if emb is None or not (Path(run_dir) / runfiles.PAIRS).is_file():
        return emb
    pairs = runfiles.load_pairs(Path(run_dir) / runfiles.PAIRS)
    split = "unknown_features" if pairs["split"] == "unknown" else "test_features"
    if split not in emb:
        return emb
    scores = metrics.pair_scores(torch.from_numpy(np.asarray(emb[split], dtype=np.float32)), pairs["first"],
                                 pairs["second"])
    return dict(emb, pair_same=pairs["same"], pair_cosine=scores["cosine"], pair_l2=scores["l2"])


def last_epoch(run_dir: Path) -> Optional[dict]:
    """The newest kept embeddings with their pairs' scores (with_pairs), or None."""
    files = runfiles.embedding_files(run_dir)
    return with_pairs(run_dir, dict(runfiles.load_embeddings(files[-1]), path=files[-1])) if files else None


def verification_curve(emb: dict, by: str = "cosine") -> tuple:
    score = emb["pair_cosine"] if by == "cosine" else -emb["pair_l2"]
    fpr, tpr, _ = roc_curve(emb["pair_same"].astype(int), score)
    return fpr, tpr


def draw_roc(run_dir: Path) -> Optional[Path]:
    """roc.png of the last epoch: unknown vs known (distance against the softmax baseline),
    the verification ROC (cosine and Euclidean) and the genuine/impostor cosine histograms.
    None when the run has neither held-out classes nor pairs."""
    run_dir = Path(run_dir)
    emb = last_epoch(run_dir)
    if emb is None or not ({"pair_same", "open_known_distance"} & set(emb)):
        return None
    rows = {int(row["epoch"]): row for row in runfiles.read_metrics(run_dir)} if (run_dir / runfiles.METRICS).is_file() else {}
    row = rows.get(int(emb["epoch"]), {})
    panels = [name for name, field in (("open", "open_known_distance"), ("verify", "pair_same"), ("hist", "pair_same"))
              if field in emb]
    fig = Figure(figsize=(5.2 * len(panels), 4.8), dpi=80)
    axes = dict(zip(panels, np.atleast_1d(fig.subplots(1, len(panels)))))
    if "open" in axes:
        ax = axes["open"]
        for by, label, colour in (("distance", "distance to nearest center", "black"),
                                  ("softmax", "1 − max softmax", "#ff7f0e")):
            fpr, tpr = open_set_curve(emb, by)
            key = "open_auroc" if by == "distance" else "open_auroc_softmax"
            ax.plot(fpr, tpr, color=colour, linewidth=2, label=f"{label} (AUROC {_fmt(row.get(key), 3)})")
        names = ", ".join(str(n) for n in emb.get("unknown_names", ()))
        _roc_axes(ax, f"unknown ({names}) vs known test digits", "known taken for unknown (FPR)",
                  "unknowns caught (TPR)")
    if "verify" in axes:
        ax = axes["verify"]
        for by, label, colour in (("cosine", "cosine similarity", "black"), ("l2", "−Euclidean distance", "#1f77b4")):
            fpr, tpr = verification_curve(emb, by)
            key = "verify_auc" if by == "cosine" else "verify_auc_l2"
            ax.plot(fpr, tpr, color=colour, linewidth=2, label=f"{label} (AUC {_fmt(row.get(key), 3)})")
        ax.axvline(1e-3, color="grey", linestyle=":", linewidth=1)
        _roc_axes(ax, f"verification: {_pair_source(emb)} (EER {_fmt(row.get('verify_eer'))}%)",
                  "impostor pairs accepted (FAR)", "genuine pairs accepted (TAR)")
    if "hist" in axes:
        ax = axes["hist"]
        same = emb["pair_same"].astype(bool)
        bins = np.linspace(-1, 1, 81)
        ax.hist(emb["pair_cosine"][same], bins, alpha=0.6, color="#2ca02c", label=f"genuine ({same.sum():,})")
        ax.hist(emb["pair_cosine"][~same], bins, alpha=0.6, color="#d62728", label=f"impostor ({(~same).sum():,})")
        ax.set_xlabel("cosine similarity of the two features")
        ax.set_ylabel("pairs")
        ax.set_title("genuine vs impostor pair scores", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(True, linewidth=0.4, alpha=0.5)
    fig.suptitle(f"{run_dir.name}: epoch {int(emb['epoch'])}")
    return _save(fig, run_dir / "roc.png")


def _pair_source(emb: dict) -> str:
    """Which classes the pairs come from, from the stored fields."""
    # The rule the run drew them by (run.pairs_split): from the unknowns when two or more classes are held out.
    if "unknown_features" in emb and len(emb.get("unknown_names", ())) >= 2:
        return "pairs of unknown classes"
    return "pairs of test digits"


def _roc_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    chance = np.r_[0.0, np.logspace(-4, 0, 200)]  # many points: the diagonal curves on the log axis
    ax.plot(chance, chance, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel + ", log scale")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, linewidth=0.4, alpha=0.5)


def draw_sweep_roc(sweep_dir: Path, members: list) -> Optional[Path]:
    """The sweep's roc.png: one curve per member (its last epoch) for unknown vs known and for
    verification, so settings compare on one plot. None when no member has either."""
    curves = {"open": [], "verify": []}
    for member in members:
        member_dir = Path(sweep_dir) / member["name"]
        if not member_dir.is_dir():
            continue
        emb = last_epoch(member_dir)
        if emb is None:
            continue
        if "open_known_distance" in emb:
            curves["open"].append((member["name"], *open_set_curve(emb)))
        if "pair_same" in emb:
            curves["verify"].append((member["name"], *verification_curve(emb)))
    panels = [key for key in curves if curves[key]]
    if not panels:
        return None
    fig = Figure(figsize=(6.2 * len(panels) + 2.5, 5), dpi=80)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    count = max(len(curves[key]) for key in panels)
    cmap = colormaps["viridis" if count > 10 else "tab10"]
    titles = {"open": ("unknown vs known, by distance to the nearest center", "known taken for unknown (FPR)",
                       "unknowns caught (TPR)"),
              "verify": ("verification pairs, by cosine similarity", "impostor pairs accepted (FAR)",
                         "genuine pairs accepted (TAR)")}
    for ax, key in zip(axes, panels):
        for index, (name, fpr, tpr) in enumerate(curves[key]):
            colour = cmap(index / max(count - 1, 1)) if count > 10 else cmap(index)
            ax.plot(fpr, tpr, color=colour, linewidth=1.5, label=name)
        _roc_axes(ax, *titles[key])
        ax.get_legend().remove()
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"{Path(sweep_dir).name}: every member's last epoch")
    return _save(fig, Path(sweep_dir) / "roc.png")


def set_log_scale(ax) -> None:
    """A log axis labelled with plain numbers (0.2, 0.5, 4) rather than 2×10⁻¹ or 4×10⁰."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))

    def minor(value, _):
        # Label the minor ticks only when the axis spans less than a decade (else it could show no number at all).
        low, high = ax.get_ylim()
        return f"{value:g}" if high / max(low, 1e-12) < 10 else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(True, linewidth=0.4, alpha=0.5)


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


# ---------- index.html ----------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.controls { display: flex; gap: 0.6em; align-items: center; margin: 0.5em 0; }
.controls input[type=range] { flex: 1; max-width: 700px; }
#epoch-label { font-variant-numeric: tabular-nums; min-width: 9em; font-weight: 600; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #666; font-size: 0.9em; }
.running { background: #fff4d6; border: 1px solid #e8c66a; padding: 0.4em 0.7em; display: inline-block; }
"""

# Plain JavaScript, no library: the page must work from file:// without a network.
SCRIPT = """
const frames = JSON.parse(document.getElementById("frame-data").textContent);
const slider = document.getElementById("epoch-slider");
const image = document.getElementById("frame");
const label = document.getElementById("epoch-label");
const caption = document.getElementById("frame-caption");
let timer = null;
function show(i) {
  i = Math.max(0, Math.min(frames.length - 1, i));
  slider.value = i;
  image.src = frames[i].src;
  label.textContent = "epoch " + frames[i].epoch + " / " + frames[frames.length - 1].epoch;
  caption.textContent = frames[i].caption;
}
function step(d) { show(Number(slider.value) + d); }
function togglePlay() {
  const button = document.getElementById("play");
  if (timer) { clearInterval(timer); timer = null; button.textContent = "play"; return; }
  if (Number(slider.value) === frames.length - 1) show(0);
  button.textContent = "pause";
  timer = setInterval(() => { if (Number(slider.value) >= frames.length - 1) togglePlay(); else step(1); }, 250);
}
slider.addEventListener("input", () => show(Number(slider.value)));
document.getElementById("prev").addEventListener("click", () => step(-1));
document.getElementById("next").addEventListener("click", () => step(1));
document.getElementById("play").addEventListener("click", togglePlay);
document.addEventListener("keydown", (e) => {
  if (e.key === "ArrowLeft") { step(-1); e.preventDefault(); }
  if (e.key === "ArrowRight") { step(1); e.preventDefault(); }
  if (e.key === "Home") { show(0); e.preventDefault(); }
  if (e.key === "End") { show(frames.length - 1); e.preventDefault(); }
});
show(frames.length - 1);
"""


# metrics.csv columns beyond the closed-set ones, shown in the page's table where a run has them.
BEYOND_COLUMNS = ("open_auroc", "open_auroc_softmax", "open_tnr95", "open_threshold", "verify_eer",
                  "verify_tar_at_far1e-3", "verify_auc")
ROC_NOTE = ('<p class="note">Left: can a digit class the network never trained on be told from the known ones by its '
            "distance to the nearest center (black), or by the softmax's confidence (orange)? Then: are two images of "
            "the same class, judged by the cosine similarity of their features (as face verification does)? Higher "
            "curves are better; the dotted line is FAR 0.1%.</p>")
LIVE_REFRESH_S = 10  # how often a live run's page reloads itself


def _page(title: str, intro: str, frames: list, sections: str, refresh_s: Optional[int] = None) -> str:
    data = json.dumps(frames).replace("</", "<\\/")
    last = len(frames) - 1
    first_src = html.escape(frames[-1]["src"]) if frames else ""
    stepper = f"""
<h2>Epoch by epoch</h2>
<div class="controls">
  <button id="prev" title="previous epoch (←)">◀</button>
  <input type="range" id="epoch-slider" min="0" max="{last}" value="{last}" aria-label="epoch">
  <button id="next" title="next epoch (→)">▶</button>
  <button id="play">play</button>
  <span id="epoch-label"></span>
</div>
<p class="note">Drag the slider or use the arrow keys (Home/End for the first and last epoch).</p>
<p id="frame-caption"></p>
<img id="frame" src="{first_src}" alt="features at the chosen epoch">
<script type="application/json" id="frame-data">{data}</script>
<script>{SCRIPT}</script>""" if frames else "<p>No frames yet.</p>"
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}<style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{intro}
{stepper}
{sections}
</body></html>
"""


def _table(header: list, rows: list) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value, digits=2) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return html.escape(str(value))


def write_run_page(run_dir: Path, running: Optional[tuple] = None) -> Path:
    """index.html of one run; images are referenced by relative path, so the
    page works wherever the run folder is copied, opened from disk.
    `running` = (epochs finished, epochs in all) while the run is live: the page
    then says so and reloads itself every LIVE_REFRESH_S seconds; the page
    written when the run ends or stops has no reload."""
    run_dir = Path(run_dir)
    rows = runfiles.read_metrics(run_dir) if (run_dir / runfiles.METRICS).is_file() else []
    by_epoch = {int(row["epoch"]): row for row in rows}
    frames = []
    for png in sorted((run_dir / "frames").glob("epoch_*.png")):
        epoch = runfiles.epoch_of(png)
        row = by_epoch.get(epoch, {})
        caption = (f"test acc {_fmt(row.get('test_acc'))}% · nearest-center acc {_fmt(row.get('nearest_center_acc'))}% · "
                   f"intra/inter {_fmt(row.get('intra_inter_ratio'), 3)}") if row else ""
        frames.append({"epoch": epoch, "src": f"frames/{png.name}", "caption": caption})
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    last = rows[-1] if rows else {}
    intro = (f"<p>{len(rows)} epochs finished · {html.escape(str(last.get('dataset', '')))} · final test accuracy "
             f"{_fmt(last.get('test_acc'))}% · nearest-center {_fmt(last.get('nearest_center_acc'))}% · intra/inter "
             f"{_fmt(last.get('intra_inter_ratio'), 3)}</p>") if rows else "<p>No epoch finished yet.</p>"
    if running:
        intro = (f'<p id="status" class="running">running: epoch {running[0]} of {running[1]} finished; this page '
                 f"reloads every {LIVE_REFRESH_S} s until the run ends</p>") + intro
    columns = ["epoch", "train_acc", "test_acc", "nearest_center_acc", "nll", "center_loss", "intra", "inter",
               "intra_inter_ratio"]
    columns += [c for c in BEYOND_COLUMNS if _column(rows, c) is not None] + ["epoch_seconds"]
    table = _table(columns, [[_fmt(row.get(c), 0 if c == "epoch" else 3) for c in columns] for row in rows])
    sections = ""
    if (run_dir / "interactive.html").is_file():
        intro += ('<p><a href="interactive.html">Interactive view</a>: every epoch\'s test features with a slider '
                  "and play button; zoom, pan, hover a point for its class, index and distance to its center"
                  " (in 3-D, turn it with the mouse).</p>")
    if (run_dir / "features.gif").is_file():
        sections += '<h2>Animation</h2><img src="features.gif" alt="every epoch, looping">'
    if (run_dir / "features_turntable.gif").is_file():
        sections += ('<h2>Turntable</h2><img src="features_turntable.gif" '
                     'alt="the last epoch\'s 3-D features, turned once around">')
    if (run_dir / "metrics.png").is_file():
        sections += '<h2>Metrics</h2><img src="metrics.png" alt="metrics per epoch">'
    if (run_dir / "roc.png").is_file():
        sections += ('<h2 id="roc">Unknowns and verification</h2>' + ROC_NOTE +
                     '<img src="roc.png" alt="ROC curves of the last epoch: unknown vs known digits and verification '
                     'pairs, and the genuine and impostor pair scores">')
    sections += f"<h2>Metrics table</h2>{table}<h2>Config</h2><pre>{html.escape(config_text)}</pre>"
    sections += ('<p class="note">Reproduce with <code>python train.py --config config.yaml</code> from this folder\'s '
                 "copy of the code; resume with <code>python train.py --resume " + html.escape(str(run_dir)) + "</code>.</p>")
    out = run_dir / "index.html"
    runfiles.write_text(out, _page(run_dir.name, intro, frames, sections, LIVE_REFRESH_S if running else None))
    return out


def write_run_report(run_dir: Path, running: Optional[tuple] = None) -> Path:
    """metrics.png, roc.png (with held-out classes or pairs) and index.html (see write_run_page for `running`)."""
    run_dir = Path(run_dir)
    if (run_dir / runfiles.METRICS).is_file():
        draw_metrics(run_dir)
        draw_roc(run_dir)
    return write_run_page(run_dir, running)


def write_sweep_report(sweep_dir: Path, running: Optional[tuple] = None) -> Path:
    """The sweep's index.html; `running` = (members ended, members in all) while members
    still train elsewhere: the page says so and reloads itself, as a live run's page does."""
    sweep_dir = Path(sweep_dir)
    meta = runfiles.read_sweep_meta(sweep_dir)
    rows = runfiles.read_summary(sweep_dir)
    draw_sweep_metrics(sweep_dir, meta["members"])
    draw_sweep_roc(sweep_dir, meta["members"])
    frames = [{"epoch": runfiles.epoch_of(p), "src": f"grid_frames/{p.name}", "caption": ""}
              for p in sorted((sweep_dir / "grid_frames").glob("epoch_*.png"))]
    keys = [axis["key"] for axis in meta["axes"]]
    member_rows = []
    for row in rows:
        link = f'<a href="{html.escape(row["member"])}/index.html">{html.escape(row["member"])}</a>'
        member_rows.append([link] + [html.escape(str(row[k])) for k in keys] +
                           [html.escape(row["status"]), f"{row['epochs_done']}/{row['epochs']}", _fmt(row["test_acc"]),
                            _fmt(row["nearest_center_acc"]), _fmt(row["intra_inter_ratio"], 3)])
    table = _table(["member"] + keys + ["status", "epochs", "test acc %", "nearest-center %", "intra/inter"], member_rows)
    results = (sweep_dir / "results.md").read_text(encoding="utf-8") if (sweep_dir / "results.md").is_file() else ""
    intro = (f"<p>Sweep over {html.escape(', '.join(keys))}: {len(meta['members'])} runs, "
             f"{meta['config']['epochs']} epochs each. Each panel shows one run's test features.</p>")
    if running:
        intro += (f'<p id="status" class="running">running: {running[0]} of {running[1]} runs ended; the picture '
                  f"shows each run's newest epoch; this page reloads every {LIVE_REFRESH_S} s</p>")
    sections = ""
    if (sweep_dir / "grid.gif").is_file():
        sections += '<h2>Animation</h2><img src="grid.gif" alt="every epoch of every run, looping">'
    sections += f"<h2>Runs</h2>{table}"
    if results:
        sections += f"<h2>Results</h2><pre>{html.escape(results)}</pre>"
    if (sweep_dir / "metrics.png").is_file():
        sections += '<h2>Metrics</h2><img src="metrics.png" alt="test accuracy and ratio per epoch, every run">'
    if (sweep_dir / "roc.png").is_file():
        sections += ('<h2 id="roc">Unknowns and verification</h2>' + ROC_NOTE +
                     '<img src="roc.png" alt="ROC curves of every run\'s last epoch">')
    sections += f"<h2>Sweep</h2><pre>{html.escape((sweep_dir / runfiles.SWEEP_FILE).read_text(encoding='utf-8'))}</pre>"
    out = sweep_dir / "index.html"
    runfiles.write_text(out, _page(sweep_dir.name, intro, frames, sections, LIVE_REFRESH_S if running else None))
    return out
