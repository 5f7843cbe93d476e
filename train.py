"""Train LeNets++ on MNIST with softmax (NLL) + lambda x Center Loss, and draw
the 2-D features every epoch.

    python train.py                                    # the defaults (clviz/config.py)
    python train.py --config configs/seed.yaml --epochs 20 --center-loss-weight 0.1
    python train.py --resume outputs/<run>             # continue after the last finished epoch
    python train.py --sweep center_loss_weight=0,0.01,0.1
    python train.py --sweep center_loss_weight=0,0.01,0.1 --workers 2     # members in parallel
    python train.py --sweep seed=0,1,2,3 --ray-address auto                # members on a Ray cluster
    python train.py --help                             # every config field as a flag
"""

import sys

from clviz import config as configlib
from clviz import errors, run, runfiles, sweep


def make_parser():
    parser = configlib.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run (or sweep) in this folder after its last finished epoch")
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append",
                        help="train one run per value into outputs/<sweep>/<KEY=V>/ and draw them side by side; "
                             "repeat for a grid of every combination")
    configlib.add_spread_flags(parser)
    return parser


def main(argv=None) -> int:
    errors.stop_on_sigterm()
    session, sweeping = None, False
    try:
        args = configlib.parse_unknown(make_parser(), argv)
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


if __name__ == "__main__":
    sys.exit(main())
