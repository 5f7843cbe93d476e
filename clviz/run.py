"""One run, start to end: check the input, open the run folder (new or
resumed), then the epoch loop in `fit`: train one epoch, evaluate, save the
frame, save the checkpoint. train.py and sweeps both drive it."""

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from clviz import config as configlib
from clviz import data as datalib
from clviz import errors, frames, gif, interactive, report, runfiles, tensorboard_log
from clviz import metrics as metricslib
from clviz.background import BackgroundRenderer
from clviz.config import Config, ConfigError
from clviz.runfiles import RunError, RunLog
from clviz.speed import Speed, pick_device, resolve_speed
from clviz.tensorboard_log import TensorBoardLog
from clviz.training import EpochRunner, Parts, build_parts, evaluate
from nets import head_settings

# Fields a resumed run may change: they alter neither the maths nor the files already written.
# data_dir may point a resumed run at a moved copy of its data, which is checked to be the same data.
RESUMABLE_OVERRIDES = ("epochs", "device", "bf16", "channels_last", "cuda_graphs", "fused_prelu", "fft_conv", "folded_eval",
                       "num_threads", "data_dir", "tensorboard")
@dataclass
class Session:
    """Everything one run needs, built before the first epoch."""
    cfg: Config
    run_dir: Path
    device: torch.device
    speed: Speed
    dataset: datalib.Dataset
    parts: Parts
    runner: EpochRunner
    generator: torch.Generator  # the data order; its state is checkpointed
    start_epoch: int
    metrics: list
    log: RunLog
    data_signature: dict  # name, sizes and label checksum of the data; checkpointed and checked on resume
    folder: runfiles.RunFolder  # holds the run folder's lock until the run ends (fit)
    tensorboard: Optional[TensorBoardLog] = None  # --tensorboard
    pairs: Optional[dict] = None  # the verification pairs (verification_pairs), None with verify_pairs 0


def resume_overrides(args) -> dict:
    """The flags given with --resume; anything but RESUMABLE_OVERRIDES is refused."""
    changed = [name for name in configlib.field_names() if hasattr(args, name) and name not in RESUMABLE_OVERRIDES]
    if changed or hasattr(args, "config") or getattr(args, "sweep", None):
        bad = configlib.flag(changed[0]) if changed else ("--config" if hasattr(args, "config") else "--sweep")
        raise ConfigError(f"{bad} cannot change when resuming (the run keeps its config.yaml); "
                          f"only {', '.join(map(configlib.flag, RESUMABLE_OVERRIDES))} may be given with --resume")
    return {name: getattr(args, name) for name in RESUMABLE_OVERRIDES if hasattr(args, name)}


def resumed_config(run_dir: Path, overrides: dict) -> tuple:
    """(config, checkpoint) of a run folder, with the resumable overrides applied."""
    checkpoint = runfiles.load_checkpoint(run_dir)
    cfg = configlib.build(overrides, from_text=True, base=configlib.build(checkpoint["config"]))
    return configlib.expand_paths(cfg), checkpoint


def prepare(args) -> Session:
    """Check and build everything for one run; any bad input raises before a file is written."""
    resume_dir = getattr(args, "resume", None)
    if resume_dir:
        run_dir = runfiles.existing_run_dir(resume_dir)
        cfg, checkpoint = resumed_config(run_dir, resume_overrides(args))
        if checkpoint["epoch"] >= cfg.epochs:
            done = checkpoint["epoch"]
            raise RunError(f"{run_dir} already finished {done} epoch{'s' if done != 1 else ''}"
                           + (f" (--epochs {cfg.epochs} asks for fewer)" if cfg.epochs < done else "")
                           + f"; pass --epochs N with N > {done} to train further")
        return open_session(cfg, checkpoint=checkpoint, run_dir=run_dir)
    cfg, config_name = configlib.resolve(args)
    runfiles.check_writable(Path(cfg.output_dir))
    return open_session(cfg, config_name=config_name, explicit=configlib.explicit_fields(args))


def open_session(cfg: Config, *, config_name: str = "run", checkpoint: Optional[dict] = None,
                 run_dir: Optional[Path] = None, dataset: Optional[datalib.Dataset] = None,
                 explicit: Optional[set] = None) -> Session:
    """A new run (no checkpoint: a new folder under cfg.output_dir) or a resumed one.
    `dataset` (on the CPU) saves reloading it for every member of a sweep.
    `explicit`: the fields the user set; given, a new run that falls back to the
    sample takes the sample's recipe for the others (Config.sample_recipe)."""
    device = pick_device(cfg.device)
    if cfg.tensorboard:
        tensorboard_log.check_available()
    if dataset is None:
        dataset = load_dataset(cfg, resuming=checkpoint is not None)
    recipe_note = ""
    recipe_length = False  # whether the run's length is the sample recipe's, measured on these 600 steps (README)
    if explicit is not None and cfg.sample_recipe and cfg.dataset == "mnist" and dataset.name == "mnist-sample":
        cfg, changed = configlib.with_sample_recipe(cfg, explicit)
        recipe_length = "epochs" in changed and cfg.train_subset is None
        if changed:
            recipe_note = ("tuned for the 4,000-image sample with configs/mnist_sample.yaml: "
                           + changes_text(changed) + " (--sample-recipe false keeps the defaults)")
    short_note = ""
    if checkpoint is None:  # a resumed run keeps the config it started with
        cfg, changed = configlib.for_short_run(cfg, len(dataset.train))
        if changed:
            given_batch = changed["batch_size"][0]
            short_note = (f"short run ({configlib.planned_steps(cfg, len(dataset.train), given_batch)} steps of "
                          f"{given_batch} images): {changes_text(changed)} for "
                          f"{configlib.planned_steps(cfg, len(dataset.train)):,} steps (--short-run off keeps the defaults)")
    # The recipe's own 15 epochs reach 96.5% with its slower warm-up: no warning against the length the app chose.
    warning = configlib.warmup_warning(cfg, len(dataset.train)) if checkpoint is None and not recipe_length else None
    data_signature = datalib.signature(dataset)
    if checkpoint is not None:
        check_same_data(run_dir, cfg, checkpoint.get("data"), data_signature)
    epochs_left = cfg.epochs - (checkpoint["epoch"] if checkpoint else 0)
    speed = resolve_speed(cfg, device, train_steps=epochs_left * math.ceil(len(dataset.train) / cfg.batch_size))
    torch.set_num_threads(speed.threads)
    cfg = dataclasses.replace(cfg, dataset=dataset.name)  # record what was really used
    dataset = dataset.to(device)

    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg, device, speed, num_classes=len(dataset.class_names))
    generator = torch.Generator().manual_seed(cfg.seed)
    if checkpoint is None:
        folder = runfiles.RunFolder.new(cfg.output_dir, cfg.run_name, config_name)
        run_dir = folder.path
        cfg = dataclasses.replace(cfg, run_name=run_dir.name)
        start_epoch, metrics = 1, []
    else:
        folder = runfiles.RunFolder.existing(run_dir)  # locked before anything in it changes
    with folder:  # a failure from here on releases the lock, and removes a new folder
        if checkpoint is not None:
            runfiles.clear_leftovers(run_dir)
            try:
                parts.load_state_dict(checkpoint["parts"])
            except (RuntimeError, KeyError, ValueError) as err:
                raise RunError(f"{run_dir}/checkpoint.pt does not fit this model ({str(err).splitlines()[0][:120]}); "
                               "it was made by another version or config, start a new run") from None
            generator.set_state(checkpoint["rng"]["data"])
            torch.set_rng_state(checkpoint["rng"]["torch"])
            start_epoch, metrics = checkpoint["epoch"] + 1, list(checkpoint["metrics"])
            runfiles.write_metrics(run_dir, metrics)  # drop any row newer than the checkpoint
        runfiles.write_config(run_dir, configlib.to_dict(cfg), comment="; ".join(filter(None, (recipe_note, short_note))))
        pairs = verification_pairs(run_dir, cfg, dataset)
        log = RunLog(run_dir)
        device_text = (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else f"cpu ({torch.backends.cpu.get_cpu_capability()})")
        for line in runfiles.environment_lines(f"{device_text}; {speed.describe()}"):
            log(line)
        log(("resuming " if checkpoint else "run ") + f"{run_dir} from epoch {start_epoch}; dataset {dataset.name} "
            f"({len(dataset.train):,} train / {len(dataset.test):,} test images)")
        if dataset.notice:
            log(f"notice: {dataset.notice}")
        if dataset.unknown is not None or cfg.verify_pairs:
            log(open_set_line(dataset, pairs))
        for line in (recipe_note, short_note, warning):
            if line:
                log(line)
        log("config:\n  " + configlib.to_yaml(cfg).strip().replace("\n", "\n  "), console=False)
        log(f"config: {config_changes(cfg)} (all of it in {run_dir / runfiles.CONFIG})")
        runner = EpochRunner(parts, dataset.train, cfg, speed)
        board = tensorboard_log.open_log(cfg.tensorboard, run_dir)
        return Session(cfg, run_dir, device, speed, dataset, parts, runner, generator, start_epoch, metrics, log,
                       data_signature, folder, board, pairs)


def pairs_split(dataset: datalib.Dataset) -> str:
    """Where verification pairs come from: the unknown classes when two or more are held out
    (the paper's protocol: identities never trained on), else the known test classes."""
    if dataset.unknown is not None and len(dataset.unknown_names) >= 2:
        return "unknown"
    return "test"


def verification_pairs(run_dir: Path, cfg: Config, dataset: datalib.Dataset) -> Optional[dict]:
    """The run's fixed verification pairs ({first, second, same, split}), drawn once from the
    seed and kept in verify_pairs.npz, so every epoch (and a resumed run) scores the same
    pairs; None with verify_pairs 0."""
    if cfg.verify_pairs == 0:
        return None
    path = Path(run_dir) / runfiles.PAIRS
    if path.is_file():
        return runfiles.load_pairs(path)
    split = pairs_split(dataset)
    labels = getattr(dataset, split).labels.cpu().numpy()
    if (np.bincount(labels) >= 2).sum() < 2:  # a tiny test split: no pairs to draw, say so in the log
        return None
    pairs = dict(metricslib.draw_pairs(labels, cfg.verify_pairs, cfg.seed), split=split)
    runfiles.save_pairs(path, pairs)
    return pairs


def open_set_line(dataset: datalib.Dataset, pairs: Optional[dict]) -> str:
    """The log's one line on held-out classes and verification pairs."""
    parts = []
    if dataset.unknown is not None:
        parts.append(f"open set: {', '.join(dataset.unknown_names)} held out of training ({len(dataset.unknown):,} "
                     f"test images are unknowns; {len(dataset.class_names)} known classes)")
    if pairs is not None:
        source = "the unknown classes" if pairs["split"] == "unknown" else "the test classes"
        count = int(pairs["same"].sum())
        parts.append(f"verification: {count:,} genuine + {len(pairs['same']) - count:,} impostor pairs of {source}")
    else:
        parts.append("verification: off (its split has fewer than two classes with two images each)")
    return "; ".join(parts)


def changes_text(changed: dict) -> str:
    """{field: (old, new)} as 'field old -> new, ...' (what a recipe changed, for the log and config.yaml)."""
    return ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())


def check_same_data(run_dir: Path, cfg: Config, saved: Optional[dict], found: dict) -> None:
    """A resumed run trains on exactly the data it started with, or not at all."""
    if saved is not None and saved != found:
        differs = ", ".join(f"{key} {saved.get(key)} then, {found.get(key)} now" for key in saved if saved.get(key) != found.get(key))
        raise RunError(f"{cfg.data_dir} does not hold the data {run_dir} trained on ({differs}); pass --data-dir with "
                       "--resume to point at that data, or start a new run")


def config_changes(cfg: Config) -> str:
    """The fields that differ from the defaults, as `key=value` (the console's view of the config)."""
    defaults = Config()
    skip = {"run_name"}
    changed = [f"{name}={value}" for name, value in configlib.to_dict(cfg).items()
               if name not in skip and value != getattr(defaults, name)]
    return ", ".join(changed) if changed else "the defaults"


def load_dataset(cfg: Config, resuming: bool = False) -> datalib.Dataset:
    """A resumed run never falls back to the sample: it must find the data it started with;
    nor does a run whose --data-dir the user named (only the default folder does)."""
    try:
        return datalib.load(cfg.dataset, cfg.data_dir, allow_sample_fallback=cfg.allow_sample_fallback and not resuming,
                            train_subset=cfg.train_subset, mean=cfg.input_mean, std=cfg.input_std,
                            unknown_classes=configlib.unknown_classes(cfg), named=configlib.names_data_dir(cfg))
    except datalib.DataError as err:
        if not resuming:
            raise
        raise datalib.DataError(f"this run trained on {cfg.dataset} from {cfg.data_dir}, which cannot be read now "
                                f"({str(err).split(';')[0]}); pass --data-dir with --resume to point at a copy") from None


def fit(s: Session, renderer: Optional[BackgroundRenderer] = None) -> int:
    """Train, then release the run folder's lock, however training ends."""
    try:
        return train_epochs(s, renderer)
    finally:
        if s.tensorboard:
            s.tensorboard.close()
        s.folder.release()


def train_epochs(s: Session, renderer: Optional[BackgroundRenderer] = None) -> int:
    """The training loop: train one epoch, evaluate, save frame, save checkpoint.
    A sweep passes its own `renderer`, so its worker process is started once."""
    cfg, parts = s.cfg, s.parts
    own_renderer = renderer is None
    renderer = renderer or BackgroundRenderer()
    # Reading the earlier epochs' limits also proves their files readable before any training; only a run-wide
    # box keeps them.
    limits_so_far = load_limits(s.run_dir, s.start_epoch)
    if cfg.frame_axes != "run":
        limits_so_far = []
    try:
        epochs = tqdm(range(s.start_epoch, cfg.epochs + 1), desc="epochs", unit="epoch", initial=s.start_epoch - 1,
                      total=cfg.epochs, dynamic_ncols=True)
        for epoch in epochs:
            started = time.perf_counter()
            lr = parts.net_optimizer.param_groups[0]["lr"]
            train = s.runner.run(s.generator, epoch=epoch)
            test = evaluate(parts.model, s.dataset.test, s.speed)
            parts.scheduler.step()
            shape = metricslib.discriminativeness(test.features, s.dataset.test.labels.cpu(), parts.center_loss.centers.detach().cpu())
            beyond, drawn = open_set_and_verification(s, test)  # unknowns and pairs, where the run has them
            shape.update(beyond)
            limits = save_frame(s, renderer, epoch, train.features, test.features, test.accuracy, limits_so_far, drawn)
            if cfg.frame_axes == "run":
                limits_so_far.append(limits)
            row = metrics_row(s, epoch, lr, train, test.nll, test.accuracy, shape, time.perf_counter() - started)
            s.metrics.append(row)
            runfiles.write_metrics(s.run_dir, s.metrics)
            runfiles.save_checkpoint(s.run_dir, checkpoint_state(s, epoch))
            if s.tensorboard:
                s.tensorboard.metrics(row)
            # The live page and metrics.png, drawn by the worker after this epoch's frame.
            renderer.submit(report.write_run_report, str(s.run_dir), (epoch, cfg.epochs))
            epochs.set_postfix(test_acc=f"{test.accuracy:.2f}%")
            s.log(f"epoch {epoch}/{cfg.epochs} | nll {row['nll']:.3f} | center {row['center_loss']:.3f} | "
                  f"train acc {row['train_acc']:.1f}% | test acc {test.accuracy:.2f}% | nearest-center "
                  f"{row['nearest_center_acc']:.2f}% | intra/inter {row['intra_inter_ratio']:.3f}{open_text(row)} | "
                  f"{row['epoch_seconds']:.1f} s")
    except (Exception, KeyboardInterrupt) as err:
        return end_early(s, err, renderer, own_renderer)
    finish(s, renderer, own_renderer)
    return 0


def end_early(s: Session, err: BaseException, renderer: BackgroundRenderer, own_renderer: bool) -> int:
    """The one way a run ends before its last epoch (Ctrl-C, SIGTERM, disk full, divergence,
    the machine's fault): with no finished epoch there is nothing to resume, so the folder
    goes (but for a diverged run, whose log says where); otherwise every finished epoch stays, the GIF and page are drawn where the disk
    and the machine still allow it, and the resume command is printed. A bug re-raises."""
    code = errors.exit_code(err)
    if code is None:
        raise err
    if code == errors.EXIT_NO_SPACE:
        s.log.path = None  # log.txt cannot grow either
    if not s.metrics and code != errors.EXIT_DIVERGED:  # a diverged run keeps its log: it says where it blew up
        if own_renderer:
            renderer.close()
        shutil.rmtree(s.run_dir, ignore_errors=True)
        s.log.path = None
        s.log(errors.explain(err, when=f" in epoch {s.start_epoch} before it finished",
                             kept=f"nothing to resume, removed {s.run_dir}")[1])
        return code
    resume = f"resume with: python train.py --resume {s.run_dir}"
    kept = f"every finished epoch is kept in {s.run_dir}"
    if code == errors.EXIT_DIVERGED:
        cfg = s.cfg
        s.log(errors.explain(err, kept="training stopped; " + kept,
                             then=f"lower --center-loss-weight (now {cfg.center_loss_weight:g}), --lr (now {cfg.lr:g}) "
                                  f"or --center-lr (now {cfg.center_lr:g})")[1])
        finish(s, renderer, own_renderer)
    elif code in errors.STOPPED:  # the GIF and page of the epochs so far, then how to go on
        s.log(errors.explain(err, kept=kept, then="drawing the GIF")[1])
        finish(s, renderer, own_renderer)
        s.log(resume)
    else:  # no space, or the machine failed: drawing now would only fail again
        if own_renderer and code == errors.EXIT_NO_SPACE:
            renderer.close()  # what it was drawing fails on its own, or fits
        elif own_renderer:
            renderer.pool.shutdown(wait=False, cancel_futures=True)
        s.log(errors.explain(err, when=f" after epoch {len(s.metrics)}", kept=kept, then=resume)[1])
    return code


def metrics_row(s: Session, epoch: int, lr: float, train, test_nll: float, test_acc: float, shape: dict,
                seconds: float) -> dict:
    """One line of metrics.csv (columns documented in the README); the open-set and
    verification columns only where the run has them (OPEN_COLUMNS, VERIFY_COLUMNS)."""
    row = dict(epoch=epoch, dataset=s.dataset.name, nll=round(train.nll, 6), center_loss=round(train.center_loss, 6),
               center_loss_weight=train.center_loss_weight,
               train_acc=round(train.accuracy, 4), test_nll=round(test_nll, 6), test_acc=round(test_acc, 4),
               nearest_center_acc=round(shape["nearest_center_acc"], 4), intra=round(shape["intra"], 5),
               inter=round(shape["inter"], 5), intra_inter_ratio=round(shape["ratio"], 5))
    row.update({key: round(shape[key], 6) for key in OPEN_COLUMNS + VERIFY_COLUMNS if key in shape})
    row.update(lr=lr, epoch_seconds=round(seconds, 3))
    return row


OPEN_COLUMNS = ("open_auroc", "open_auroc_softmax", "open_tnr95", "open_threshold")
VERIFY_COLUMNS = ("verify_eer", "verify_tar_at_far1e-3", "verify_auc", "verify_eer_l2", "verify_auc_l2")


def open_set_and_verification(s: Session, test) -> tuple[dict, dict]:
    """This epoch's open-set metrics (with held-out classes) and verification metrics (with
    pairs), and what the frame's embeddings file keeps of them."""
    centers = s.parts.center_loss.centers.detach().cpu()
    out, drawn = {}, {}
    unknown = None
    if s.dataset.unknown is not None:
        unknown = evaluate(s.parts.model, s.dataset.unknown, s.speed, labelled=False)
        scores = dict(known_distance=metricslib.nearest_center_distance(test.features, centers).numpy(),
                      unknown_distance=metricslib.nearest_center_distance(unknown.features, centers).numpy(),
                      known_confidence=test.confidence.numpy(), unknown_confidence=unknown.confidence.numpy())
        out.update(metricslib.open_set(**scores))
        drawn.update(unknown_features=unknown.features.numpy(), unknown_labels=s.dataset.unknown.labels.cpu().numpy(),
                     unknown_names=s.dataset.unknown_names, open_threshold=out["open_threshold"], open_scores=scores)
    if s.pairs is not None:
        features = unknown.features if s.pairs["split"] == "unknown" else test.features
        scores = metricslib.pair_scores(features, s.pairs["first"], s.pairs["second"])
        out.update(metricslib.verification(s.pairs["same"], scores["cosine"], scores["l2"]))
        # The pairs are in verify_pairs.npz and the features in the embeddings: roc.png recomputes the scores.
    return out, drawn


def open_text(row: dict) -> str:
    """The log line's open-set and verification part ('' without them)."""
    text = ""
    if "open_auroc" in row:
        text += (f" | open AUROC {row['open_auroc']:.3f} (softmax {row['open_auroc_softmax']:.3f}), "
                 f"TNR@95 {row['open_tnr95']:.1f}%")
    if "verify_eer" in row:
        text += f" | verify EER {row['verify_eer']:.2f}%"
    return text


def save_frame(s: Session, renderer, epoch, train_features, test_features, test_acc, limits_so_far,
               extra: Optional[dict] = None) -> list:
    """Write this epoch's embeddings and have the frame drawn in the background,
    with axes covering every epoch so far (the GIF redraw fixes them run-wide).
    `extra`: the open-set and verification fields of the embeddings file."""
    cfg = s.cfg
    keep = epoch % cfg.embeddings_every == 0 or epoch == cfg.epochs
    npz = runfiles.embeddings_path(s.run_dir, epoch, keep)
    head = s.parts.model.classifier
    centers = s.parts.center_loss.centers.detach().float().cpu().numpy()
    extra = extra or {}
    limits = frames.epoch_limits(train_features.numpy(), test_features.numpy(), centers, extra.get("unknown_features"))
    scale, margin = head_settings(cfg.head, cfg.head_scale, cfg.head_margin)
    runfiles.save_embeddings(npz, epoch=epoch, epochs=cfg.epochs, train_features=train_features.numpy(),
                             train_labels=s.dataset.train.labels.cpu().numpy(), test_features=test_features.numpy(),
                             test_labels=s.dataset.test.labels.cpu().numpy(), centers=centers, test_acc=test_acc,
                             limits=limits, dataset=s.dataset.name, center_loss_weight=cfg.center_loss_weight,
                             center_update=cfg.center_update, head=head.kind, head_scale=scale, head_margin=margin,
                             head_weight=head.weight.detach().float().cpu().numpy(),
                             head_bias=None if head.bias is None else head.bias.detach().float().cpu().numpy(),
                             class_names=s.dataset.class_names, class_ids=s.dataset.known_classes, **extra)
    # A 3-D frame fits its own cube while training; the final GIF's redraw fixes the axes.
    box = None if cfg.feat_dim == 3 else frames.square_limits(limits_so_far + [limits])
    renderer.submit(frames.render_frame, str(npz), str(runfiles.frame_path(s.run_dir, epoch)), box,
                    options=frames.FrameOptions.from_config(cfg), delete_npz=not keep)
    return limits


def write_tensorboard_pictures(s: Session) -> None:
    """The frames, and the last saved epoch's test features for the Embedding Projector."""
    s.tensorboard.frames(sorted((s.run_dir / runfiles.FRAMES).glob("epoch_*.png")))
    last = runfiles.embedding_files(s.run_dir)[-1]
    emb = runfiles.load_embeddings(last)
    features, images = torch.from_numpy(emb["test_features"].astype("float32")), s.dataset.test.images
    names = [s.dataset.class_names[int(k)] for k in s.dataset.test.labels.cpu()]
    if "unknown_features" in emb:  # held-out classes, named as such in the Projector's labels
        features = torch.cat([features, torch.from_numpy(emb["unknown_features"].astype("float32"))])
        images = torch.cat([images, s.dataset.unknown.images])
        names += [f"unknown {int(k)}" for k in s.dataset.unknown.labels.cpu()]
    s.tensorboard.embedding(features, names, images, runfiles.epoch_of(last))


def write_interactive(run_dir: Path, cfg: Config) -> Optional[Path]:
    """interactive.html; a sweep's members share one copy of Plotly's JavaScript in the sweep folder."""
    run_dir = Path(run_dir)
    return interactive.write_interactive(run_dir, cfg, js_dir=run_dir.parent if runfiles.is_sweep(run_dir.parent) else run_dir)


def load_limits(run_dir: Path, start_epoch: int) -> list:
    """The limits of the kept epochs before `start_epoch` (a resumed run's axes)."""
    return [runfiles.read_limits(p) for p in runfiles.embedding_files(run_dir) if runfiles.epoch_of(p) < start_epoch]


def checkpoint_state(s: Session, epoch: int) -> dict:
    rng = {"data": s.generator.get_state(), "torch": torch.get_rng_state()}
    return {"epoch": epoch, "parts": s.parts.state_dict(), "rng": rng, "config": configlib.to_dict(s.cfg),
            "metrics": s.metrics, "data": s.data_signature}


def finish(s: Session, renderer, own_renderer: bool = True) -> None:
    """Wait for the frames, then redraw them with run-wide axes and write the GIF."""
    try:
        renderer.wait()
    finally:
        if own_renderer:
            renderer.close()
    written = gif.make_gif(s.run_dir, s.cfg, renderer=None if own_renderer else renderer)
    if written:
        write_interactive(s.run_dir, s.cfg)
        if s.tensorboard:
            write_tensorboard_pictures(s)
        page = report.write_run_report(s.run_dir)
        count = len(runfiles.embedding_files(s.run_dir))
        s.log(f"wrote {written} ({count} frame{'s' if count != 1 else ''}), frames/epoch_*.png, metrics.png "
              f"and {page} (open it in a browser)")
