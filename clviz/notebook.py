"""The Python API for notebooks (Jupyter, Colab) and scripts:

    from clviz.notebook import train, show, load
    run = train(epochs=2, center_loss_weight=0.1)          # a run folder, as python train.py makes it
    show(run)                                               # its GIF inline (a sweep: the grid GIF)
    data = load(run)                                        # metrics rows and every epoch's features
    sweep = train(sweep={"center_loss_weight": [0, 1]}, epochs=2)

Each keyword is a config field (clviz/config.py; `python train.py --help` lists
them) and means what its flag means; `config="best"` starts from a config file.
Bad values raise ValueError with the same one line the command prints."""

import contextlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from clviz import commands, runfiles
from clviz import config as configlib


class Tee(io.StringIO):
    """A stream that keeps what is written and passes it on."""

    def __init__(self, through):
        super().__init__()
        self.through = through

    def write(self, text: str) -> int:
        self.through.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.through.flush()

    def text(self) -> str:
        return self.getvalue()


@dataclass
class RunData:
    """What `load` returns. `metrics`: one dict per finished epoch, numbers as floats
    (`epoch` an int, `dataset` a string); `embeddings`: {epoch: {field: numpy array}},
    e.g. `test_features` (N, feat_dim) float16, `test_labels` (N,), `centers` (classes, feat_dim);
    a sweep's `members`: {member name: RunData}."""
    path: Path
    config: dict
    metrics: list
    embeddings: dict = field(default_factory=dict)
    members: dict = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        """One metrics column over the epochs, e.g. data.column("test_acc")."""
        return np.array([row.get(name, np.nan) for row in self.metrics], dtype=float)


def flag_args(fields: dict) -> list:
    """{"center_loss_weight": 0.1, "regions": False} -> ["--center-loss-weight", "0.1", "--regions", "false"]."""
    argv = []
    for name, value in fields.items():
        configlib.check_key(name)
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        argv += [configlib.flag(name), "null" if value is None else str(value)]
    return argv


def train(*, config: Optional[str] = None, sweep: Optional[dict] = None, quiet: bool = False, **fields) -> Path:
    """Train one run (or, with `sweep={field: [values]}`, one run per combination) and
    return its folder. Prints what train.py prints (`quiet=True`: only errors)."""
    argv = flag_args(fields)
    if config is not None:
        argv += ["--config", str(config)]
    for name, values in (sweep or {}).items():
        configlib.check_key(name)
        argv += ["--sweep", f"{name}=" + ",".join(str(v) for v in values)]
    output_dir = Path(fields.get("output_dir", configlib.Config().output_dir)).expanduser()
    before = set(output_dir.iterdir()) if output_dir.is_dir() else set()
    errors = Tee(sys.stderr)  # progress bars still show; the error line is also kept for the exception
    with contextlib.redirect_stderr(errors), (contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()):
        code = commands.train(argv)
    if code != 0:
        last = [line for line in errors.text().splitlines() if line.startswith("error:")]
        raise ValueError(last[-1] if last else f"training stopped with exit code {code}")
    if fields.get("run_name"):
        return output_dir / fields["run_name"]
    made = [p for p in output_dir.iterdir() if p.is_dir() and p not in before]
    return max(made, key=lambda p: p.stat().st_mtime)


def load(run: Union[str, Path]) -> RunData:
    """A run's config, metrics and embeddings (a sweep: each member's, under `members`)."""
    run = Path(run)
    if runfiles.is_sweep(run):
        meta = runfiles.read_sweep_meta(run)
        members = {m["name"]: load(run / m["name"]) for m in meta["members"] if (run / m["name"] / runfiles.METRICS).is_file()}
        return RunData(run, meta["config"], runfiles.read_summary(run), members=members)
    rows = []
    for row in runfiles.read_metrics(run):
        rows.append({key: (int(value) if key == "epoch" else value if key == "dataset" else
                           float(value) if value not in ("", None) else np.nan) for key, value in row.items()})
    embeddings = {runfiles.epoch_of(path): runfiles.load_embeddings(path) for path in runfiles.embedding_files(run)}
    return RunData(run, runfiles.read_config(run), rows, embeddings)


def show(run: Union[str, Path], epoch: Optional[int] = None):
    """Display a run's GIF (or one epoch's frame; a sweep: its grid GIF / PNG) inline in
    Jupyter or Colab. Outside a notebook it returns the picture's path."""
    run = Path(run)
    if runfiles.is_sweep(run):
        picture = run / ("grid.gif" if epoch is None else "grid.png")
    else:
        picture = run / "features.gif" if epoch is None else runfiles.frame_path(run, epoch)
    if not picture.is_file():
        raise ValueError(f"{picture} does not exist; train the run first, or redraw it with centerloss-viz show {run}")
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return picture
    if get_ipython() is None:
        return picture
    display(Image(filename=str(picture)))
    return None
