"""`--tensorboard`: the run also written as TensorBoard events, in
RUN/tensorboard, through torch's SummaryWriter:

    metrics/<column>   every numeric metrics.csv column, one point per epoch
    frames             each epoch's frame (written when the run ends: the frames are drawn in the background)
    test features      the last epoch's test features for the Embedding Projector, with each digit's
                       image as its thumbnail and its class as its label

TensorBoard is optional: it is imported only when asked for, and its absence
is one line naming the install command.
"""

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from clviz.config import ConfigError

FOLDER = "tensorboard"
INSTALL = "pip install tensorboard"
MAX_EMBEDDED = 10_000  # test points in the projector (the sprite of thumbnails grows with them)


class TensorBoardLog:
    def __init__(self, run_dir: Path):
        check_available()
        from torch.utils.tensorboard import SummaryWriter  # optional: only with --tensorboard
        self.folder = Path(run_dir) / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def metrics(self, row: dict) -> None:
        """One epoch's metrics.csv row as scalars at step = epoch."""
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"metrics/{key}", value, epoch)
        self.writer.flush()

    def frames(self, pngs: list) -> None:
        """Every frame PNG, at step = its epoch (frames/epoch_007.png -> 7)."""
        for png in pngs:
            epoch = int(Path(png).stem.split("_")[-1])
            with Image.open(png) as image:
                self.writer.add_image("frames", np.asarray(image.convert("RGB")), epoch, dataformats="HWC")
        self.writer.flush()

    def embedding(self, features: torch.Tensor, names: list, images: torch.Tensor, epoch: int) -> None:
        """Test features (N, feat_dim) with each one's label text (N,) and image (N, 1, 28, 28),
        normalised as the network saw them (rescaled to 0..1 here for the thumbnails)."""
        count = min(len(names), MAX_EMBEDDED)
        if count < len(names):  # an even spread, so held-out classes at the end are not cut off
            keep = torch.linspace(0, len(names) - 1, count).long()
            features, images, names = features[keep], images[keep.to(images.device)], [names[i] for i in keep]
        thumbs = images[:count].float().cpu()
        thumbs = (thumbs - thumbs.amin()) / max(float(thumbs.amax() - thumbs.amin()), 1e-12)
        self.writer.add_embedding(features[:count].float().cpu(), metadata=[str(n) for n in names[:count]],
                                  label_img=thumbs, global_step=epoch, tag="test features")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def check_available() -> None:
    """Raise ConfigError naming the install command if TensorBoard is missing (before any run folder exists)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (optional: only with --tensorboard)
    except ImportError:
        raise ConfigError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}") from None


def open_log(enabled: bool, run_dir: Path) -> Optional[TensorBoardLog]:
    return TensorBoardLog(run_dir) if enabled else None
