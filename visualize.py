"""Redraw a run's (or a sweep's) frames, GIF and page from its saved
embeddings, without retraining:

    python visualize.py outputs/<run>                 # every frame + features.gif + index.html
    python visualize.py outputs/<run> --split test --max-points 20000 --duration-ms 120
    python visualize.py outputs/<run> --view angular --no-regions
    python visualize.py outputs/<sweep>               # every member, then grid.gif / grid.png

Options not given are the run's own config (its config.yaml).
"""

import argparse
import sys
from pathlib import Path

from clviz import config as configlib
from clviz import errors, frames, gif, report, run, runfiles, sweep
from clviz.runfiles import RunError


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
