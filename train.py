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
from clviz import run, runfiles, sweep
from clviz.config import ConfigError
from clviz.data import DataError
from clviz.runfiles import RunError


def make_parser():
    parser = configlib.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run (or sweep) in this folder after its last finished epoch")
    parser.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append",
                        help="train one run per value into outputs/<sweep>/<KEY=V>/ and draw them side by side; "
                             "repeat for a grid of every combination")
    configlib.add_spread_flags(parser)
    return parser


def main(argv=None) -> int:
    run.stop_on_sigterm()
    session = None
    try:
        args = configlib.parse_unknown(make_parser(), argv)
        if getattr(args, "sweep", None) or runfiles.is_sweep(getattr(args, "resume", None)):
            return sweep.main(args)
        configlib.sweep_spread(args, sweeping=False)  # refuses --workers and the Ray flags outside a sweep
        session = run.prepare(args)
        return run.fit(session)
    except (ConfigError, DataError, RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return run.EXIT_BAD_INPUT
    except runfiles.DiskFull as err:  # while drawing the GIF or page after training: the epochs are kept
        where = f"; every finished epoch is kept: free space and redraw with python visualize.py {session.run_dir}" \
            if session is not None else "; free space and run the same command again"
        print(f"error: {err}{where}", file=sys.stderr)
        return run.EXIT_NO_SPACE
    except (MemoryError, OSError, RuntimeError) as err:  # out of memory or an I/O error outside the epochs
        fault = run.machine_fault(err)
        if fault is None:  # a bug: its traceback is what a report needs
            raise
        where = f" while writing {err.filename}" if isinstance(err, OSError) and err.filename else ""
        if session is None:
            print(f"error: {fault}{where} before training; run the same command again once the machine has recovered",
                  file=sys.stderr)
        else:
            print(f"error: {fault}{where} while drawing after training; every finished epoch is kept in "
                  f"{session.run_dir}; redraw with python visualize.py {session.run_dir}", file=sys.stderr)
        return run.EXIT_FAULT
    except KeyboardInterrupt as stop:  # before training, or a second Ctrl-C while the GIF is written
        if session is None:
            print("interrupted before training started; nothing to keep", file=sys.stderr)
        else:
            print(f"interrupted again while drawing: every finished epoch is saved in {session.run_dir}; "
                  f"python visualize.py {session.run_dir} redraws the GIF and page", file=sys.stderr)
        return run.stop_code(stop)


if __name__ == "__main__":
    sys.exit(main())
