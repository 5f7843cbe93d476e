"""The two commands, `train` and `visualize`, behind train.py, visualize.py and the
installed `centerloss-viz` command (`centerloss-viz train ...`, `centerloss-viz show RUN`).
They live in the package so that `pip install` can ship them; the two scripts at
the top level only call them."""

import argparse
import sys
from pathlib import Path

from clviz import config as configlib
from clviz import errors, frames, gif, report, run, runfiles, sweep
from clviz.runfiles import RunError

TRAIN_TITLE = "Train LeNets++ on MNIST with softmax (NLL) + lambda x Center Loss, and draw the 2-D features every epoch."
VISUALIZE_TITLE = "Redraw a run's (or a sweep's) frames, GIF and page from its saved embeddings, without retraining."


def train_parser() -> argparse.ArgumentParser:
    parser = configlib.make_parser(TRAIN_TITLE)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run (or sweep) in this folder after its last finished epoch")
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append",
                        help="train one run per value into outputs/<sweep>/<KEY=V>/ and draw them side by side; "
                             "repeat for a grid of every combination")
    configlib.add_spread_flags(parser)
    return parser


def train(argv=None) -> int:
    """`python train.py ARGS` / `centerloss-viz train ARGS`; returns the exit code."""
    errors.stop_on_sigterm()
    session, sweeping = None, False
    try:
        args = configlib.parse_unknown(train_parser(), argv)
        if getattr(args, "sweep", None) or runfiles.is_sweep(getattr(args, "resume", None)):
            sweeping = True
            return sweep.main(args)
        configlib.sweep_spread(args, sweeping=False)  # refuses --workers and the Ray flags outside a sweep
        session = run.prepare(args)
        return run.fit(session)
    except (Exception, KeyboardInterrupt) as err:  # before training, or while drawing after it (run.fit)
        if sweeping:  # sweep.main handles stops and the machine's faults itself; this is what escaped it
            code, line = errors.explain(err, when=" in the sweep", kept="its members' finished epochs are kept",
                                        then="resume it with python train.py --resume <sweep folder>")
        elif session is None:
            code, line = errors.explain(err, when=" before training", kept="nothing was written")
        else:  # the epochs are kept: only the drawing is left to redo
            redraw = f"redraw with python visualize.py {session.run_dir}"
            again = " again" if isinstance(err, KeyboardInterrupt) else ""
            code, line = errors.explain(err, when=f"{again} while drawing after training",
                                        kept=f"every finished epoch is kept in {session.run_dir}", then=redraw)
        print(line, file=sys.stderr)
        return code


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def visualize_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=VISUALIZE_TITLE)
    parser.add_argument("run_dir", type=Path, help="a run folder, e.g. outputs/20261123-120000-default, or a sweep folder")
    parser.add_argument("--split", choices=("both",) + frames.SPLITS, default="both", help="which panels to draw (default: both)")
    parser.add_argument("--max-points", type=positive_int, default=None, help="at most this many points per panel (default: the run's config)")
    parser.add_argument("--view", choices=("auto",) + frames.VIEWS, default=None,
                        help="plane, or angular (unit circle + angle histogram); default: the run's config")
    parser.add_argument("--axes", choices=("epoch", "run"), default=None,
                        help="epoch: each frame fits its epoch; run: one box for the whole run (default: the run's config)")
    parser.add_argument("--regions", action=argparse.BooleanOptionalAction, default=None,
                        help="shade the decision regions (default: the run's config)")
    parser.add_argument("--duration-ms", type=positive_int, default=None, help="GIF milliseconds per frame (default: the run's config)")
    parser.add_argument("--hold-last-ms", type=positive_int, default=None, help="GIF milliseconds for the last frame (default: the run's config)")
    return parser


def saved_config(run_dir: Path) -> configlib.Config:
    """The run's config.yaml as a Config; keys this version does not know are ignored."""
    known = set(configlib.field_names())
    return configlib.build({k: v for k, v in runfiles.read_config(run_dir).items() if k in known})


def visualize(argv=None) -> int:
    """`python visualize.py RUN` / `centerloss-viz show RUN`; returns the exit code."""
    args = visualize_parser().parse_args(argv)
    try:
        return redraw_all(args)
    except (Exception, KeyboardInterrupt) as err:
        # Every file is replaced atomically: what was drawn is whole, the rest is as it was.
        code, line = errors.explain(err, kept="the run's data are untouched",
                                    then=f"redraw with python visualize.py {args.run_dir}")
        print(line, file=sys.stderr)
        return code


def redraw_all(args) -> int:
    if runfiles.is_sweep(args.run_dir):
        runs = [args.run_dir / m["name"] for m in runfiles.read_sweep_meta(args.run_dir)["members"]]
    elif runfiles.embedding_files(args.run_dir):
        runs = [args.run_dir]
    else:
        print(f"error: no embeddings/epoch_*.npz in {args.run_dir}; pass a run or sweep folder made by train.py",
              file=sys.stderr)
        return 2
    for run_dir in filter(runfiles.embedding_files, runs):
        try:
            folder = runfiles.RunFolder.existing(run_dir)
        except RunError:
            raise RunError(f"{run_dir} is being trained right now (its index.html updates itself); "
                           "redraw it once train.py has finished") from None
        try:
            redraw_run(run_dir, args)
        finally:
            folder.release()
    if runs != [args.run_dir]:
        sweep.finish(args.run_dir)
    return 0


def redraw_run(run_dir: Path, args) -> None:
    """One run's frames, GIF, interactive view and page, under the run's lock."""
    runfiles.clear_leftovers(run_dir)  # a killed writer's temporary files: never renamed into place, so empty of use
    cfg = saved_config(run_dir)
    options = frames.FrameOptions.from_config(cfg, splits=frames.SPLITS if args.split == "both" else (args.split,),
                                              max_points=args.max_points, view=args.view, regions=args.regions,
                                              axes=args.axes)
    written = gif.make_gif(run_dir, cfg, options=options, duration_ms=args.duration_ms,
                           hold_last_ms=args.hold_last_ms)
    run.write_interactive(run_dir, cfg)
    page = report.write_run_report(run_dir)
    print(f"redrew {len(runfiles.embedding_files(run_dir))} frames in {run_dir / runfiles.FRAMES}; "
          f"wrote {written} and {page}")


COMMANDS = {"train": train, "show": visualize, "visualize": visualize}
USAGE = """usage: centerloss-viz COMMAND [ARGS]

  centerloss-viz train [FLAGS]     train one run, a sweep or a resume (as python train.py; --help lists every flag)
  centerloss-viz show RUN [FLAGS]  redraw a run's or a sweep's pictures and page (as python visualize.py)
"""


def main(argv=None) -> int:
    """The installed `centerloss-viz` command: `train` or `show` (alias `visualize`), then that command's flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else errors.EXIT_BAD_INPUT
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}{configlib.suggest(argv[0], COMMANDS)}; "
              "use centerloss-viz train or centerloss-viz show RUN", file=sys.stderr)
        return errors.EXIT_BAD_INPUT
    return COMMANDS[argv[0]](argv[1:])


def console() -> None:
    """Entry point of the console script (its exit code is the command's)."""
    sys.exit(main())
