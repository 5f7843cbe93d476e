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

from clviz.commands import train as main
from clviz.commands import train_parser as make_parser

__all__ = ["main", "make_parser"]

if __name__ == "__main__":
    sys.exit(main())
