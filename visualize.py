"""Redraw a run's (or a sweep's) frames, GIF and page from its saved
embeddings, without retraining:

    python visualize.py outputs/<run>                 # every frame + features.gif + index.html
    python visualize.py outputs/<run> --split test --max-points 20000 --duration-ms 120
    python visualize.py outputs/<run> --view angular --no-regions
    python visualize.py outputs/<sweep>               # every member, then grid.gif / grid.png

Options not given are the run's own config (its config.yaml).
"""

import sys

from clviz.commands import visualize as main
from clviz.commands import visualize_parser as make_parser

__all__ = ["main", "make_parser"]

if __name__ == "__main__":
    sys.exit(main())
