"""Side-by-side speed of the usual center-loss recipe and this app, same device, same run.

    python bench/bench.py --data-dir <folder with MNIST/raw>                  # CPU: 6,000 training images
    python bench/bench.py --data-dir <folder with MNIST/raw> --train-images 60000 --epochs 3   # a GPU

(a) "seed" is the loop most center-loss repos and blog posts use: a
    DataLoader over torchvision's MNIST with ToTensor + Normalize per sample,
    eager fp32, the loss weight undone on the center gradients, a new
    matplotlib figure per epoch, and imageio's default GIF writer.
(b) "app" is this project's path (clviz/training.py, clviz/frames.py, clviz/gif.py) with its auto
    speed settings.
Each side runs in its own child process (so peak memory is its own) on the
same images, batch size and epochs; the table gives the median over epochs
(the first epoch, which warms up, is dropped when there are several).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synchronize(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fake_embeddings(n_train=60000, n_test=10000, seed=0):
    """Ten Gaussian blobs on a ring: the shape and size of a real epoch's features."""
    import numpy as np
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    centers = np.stack([np.cos(angles), np.sin(angles)], 1) * 10

    def blob(n):
        labels = rng.integers(0, 10, n)
        return (centers[labels] + rng.normal(0, 1.5, (n, 2))).astype(np.float32), labels.astype(np.uint8)

    (trf, trl), (tef, tel) = blob(n_train), blob(n_test)
    return trf, trl, tef, tel, centers.astype(np.float32)


# ---------------------------------------------------------------- (a) seed
def run_seed(args) -> dict:
    import imageio
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from centerloss import CenterLoss
    from nets import LeNetsPP

    device = torch.device(args.device)
    torch.manual_seed(0)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = Subset(datasets.MNIST(args.data_dir, train=True, download=True, transform=transform), range(args.train_images))
    test_set = datasets.MNIST(args.data_dir, train=False, download=True, transform=transform)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                              pin_memory=device.type == "cuda")
    test_loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    model = LeNetsPP().to(device)
    center_loss = CenterLoss(10, 2).to(device)
    net_opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    center_opt = torch.optim.SGD(center_loss.parameters(), lr=0.5)
    weight = 1.0
    train_s, eval_s = [], []
    for _ in range(args.epochs):
        synchronize(device)
        start = time.perf_counter()
        model.train()
        feats, labels_seen = [], []
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            features, log_probs = model(images)
            loss = F.nll_loss(log_probs, labels) + weight * center_loss(features, labels)
            net_opt.zero_grad()
            center_opt.zero_grad()
            loss.backward()
            for p in center_loss.parameters():
                p.grad.data *= 1.0 / weight
            net_opt.step()
            center_opt.step()
            feats.append(features.detach().cpu().numpy())
            labels_seen.append(labels.cpu().numpy())
        synchronize(device)
        train_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            _ = [model(images.to(device))[0].cpu().numpy() for images, _labels in test_loader]
        eval_s.append(time.perf_counter() - start)

    trf, trl, tef, tel, centers = fake_embeddings()
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for _ in range(3):  # a new figure per epoch, as the seeds do
            fig, axes = plt.subplots(1, 2, figsize=(12, 6))
            for ax, f, lab in ((axes[0], trf, trl), (axes[1], tef, tel)):
                for digit in range(10):
                    ax.scatter(f[lab == digit, 0], f[lab == digit, 1], s=1, label=str(digit))
                ax.scatter(centers[:, 0], centers[:, 1], marker="*", c="black", s=100)
                ax.legend(loc="upper right")
            fig.savefig(f"{tmp}/frame.png")
            plt.close(fig)
        frame_s = (time.perf_counter() - start) / 3
        _, frames = gif_input(tmp)
        start = time.perf_counter()
        imageio.mimsave(f"{tmp}/seed.gif", frames, duration=200, loop=0)
        gif_s = time.perf_counter() - start
        gif_mb = os.path.getsize(f"{tmp}/seed.gif") / 2**20
    return dict(train_s=train_s, eval_s=eval_s, frame_s=frame_s, gif_s=gif_s, gif_mb=gif_mb, peak_mb=peak_memory_mb(device))


GIF_FRAMES = 150


def gif_input(tmp, count=GIF_FRAMES):
    """150 frames for both GIF writers: ten real frames drawn by the app, cycled.
    Returns (PNG paths, pixel arrays)."""
    import imageio.v3 as iio

    from clviz import frames
    renderer = frames.FrameRenderer()
    trf, trl, tef, tel, centers = fake_embeddings(6000, 2000)
    paths, distinct = [], []
    for k in range(10):
        emb = dict(frame_fields(k + 1), train_features=trf * (1 + 0.05 * k), train_labels=trl,
                   test_features=tef * (1 + 0.05 * k), test_labels=tel, centers=centers * (1 + 0.05 * k))
        paths.append(Path(tmp) / f"in{k}.png")
        renderer.draw(emb, frames.square_limits([[-20, 20, -20, 20]]), paths[-1])
        distinct.append(iio.imread(paths[-1])[..., :3])
    return [paths[i % 10] for i in range(count)], [distinct[i % 10] for i in range(count)]


# ---------------------------------------------------------------- (b) app
def frame_fields(epoch: int) -> dict:
    """What an embeddings file says about itself, for the frame's title."""
    return dict(epoch=epoch, epochs=10, test_acc=99.0, dataset="mnist", center_loss_weight=0.01, center_update="sgd",
                head="linear", head_scale=1.0, head_margin=0.0)


def run_app(args) -> dict:
    import dataclasses

    import torch

    from clviz import data as datalib
    from clviz import frames, gif, training
    from clviz import speed as speedlib
    from clviz.config import Config

    cfg = dataclasses.replace(Config(), batch_size=args.batch_size, device=args.device)
    device = speedlib.pick_device(cfg.device)
    speed = speedlib.resolve_speed(cfg, device)
    dataset = datalib.load("mnist", args.data_dir, allow_sample_fallback=False, train_subset=args.train_images)
    train, test = dataset.train.to(device), dataset.test.to(device)
    torch.manual_seed(0)
    parts = training.build_parts(cfg, device, speed)
    runner = training.EpochRunner(parts, train, cfg, speed)
    generator = torch.Generator().manual_seed(0)
    train_s, eval_s = [], []
    for epoch in range(1, args.epochs + 1):
        synchronize(device)
        start = time.perf_counter()
        runner.run(generator, epoch=epoch, show_progress=False)
        synchronize(device)
        train_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        training.evaluate(parts.model, test, speed)
        eval_s.append(time.perf_counter() - start)

    trf, trl, tef, tel, centers = fake_embeddings()
    # With the head's weights, so the frame also shades the decision regions (on by default).
    emb = dict(frame_fields(1), train_features=trf, train_labels=trl, test_features=tef, test_labels=tel, centers=centers,
               head_weight=centers / 10)
    renderer = frames.FrameRenderer()
    limits = frames.square_limits([frames.robust_limits(trf, centers)])
    with tempfile.TemporaryDirectory() as tmp:
        renderer.draw(emb, limits, Path(tmp) / "warm.png")
        times = []
        for k in range(5):
            start = time.perf_counter()
            renderer.draw(emb, limits, Path(tmp) / f"f{k}.png")
            times.append(time.perf_counter() - start)
        frame_s = statistics.median(times)
        frame3d_s = time_3d_frame(tmp)
        paths, _ = gif_input(tmp)
        start = time.perf_counter()
        gif.write_gif(paths, Path(tmp) / "app.gif", duration_ms=cfg.frame_duration_ms, hold_last_ms=cfg.gif_hold_last_ms)
        gif_s = time.perf_counter() - start
        gif_mb = os.path.getsize(Path(tmp) / "app.gif") / 2**20
    return dict(train_s=train_s, eval_s=eval_s, frame_s=frame_s, frame3d_s=frame3d_s, gif_s=gif_s, gif_mb=gif_mb,
                peak_mb=peak_memory_mb(device), speed=speed.describe())


def time_3d_frame(tmp) -> float:
    """Median seconds for one 3-D frame (feat_dim 3, 60k + 10k points, ArcFace's sphere view), as a run draws it."""
    import numpy as np

    from clviz import frames, runfiles
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (10, 3)).astype(np.float32)
    def blob(n):
        labels = rng.integers(0, 10, n)
        return (centers[labels] * 10 + rng.normal(0, 1.5, (n, 3))).astype(np.float32), labels.astype(np.uint8)
    (trf, trl), (tef, tel) = blob(60000), blob(10000)
    npz = Path(tmp) / "3d.npz"
    runfiles.save_embeddings(npz, epoch=1, epochs=10, train_features=trf, train_labels=trl, test_features=tef,
                             test_labels=tel, centers=centers * 10, test_acc=99.0, limits=np.zeros(4), dataset="mnist",
                             center_loss_weight=0.1, center_update="sgd", head="arcface", head_weight=centers)
    frames.render_frame(npz, Path(tmp) / "warm3d.png", None)
    times = []
    for k in range(5):
        start = time.perf_counter()
        frames.render_frame(npz, Path(tmp) / f"f3d{k}.png", None)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- table
def typical(values):
    return statistics.median(values[1:] if len(values) > 1 else values)


def whole_run_s(side: dict) -> float:
    """What a run of these epochs costs end to end, warm-up included: training
    and evaluation of every epoch, one frame per epoch and the GIF time per
    frame. The app's frames run in a background process during training;
    counting them here as if they were not is the conservative side."""
    epochs = len(side["train_s"])
    return sum(side["train_s"]) + sum(side["eval_s"]) + epochs * (side["frame_s"] + side["gif_s"] / GIF_FRAMES)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--train-images", type=int, default=6000, help="training images per epoch (default 6000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side (default 3)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the seed loop (default 0)")
    parser.add_argument("--side", choices=("seed", "app"), help=argparse.SUPPRESS)  # internal: one child's work
    args = parser.parse_args()
    if args.side:
        result = run_seed(args) if args.side == "seed" else run_app(args)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for side in ("seed", "app"):
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", side], capture_output=True, text=True)
        line = next((out for out in proc.stdout.splitlines() if out.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} side failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(line[len("RESULT "):])
    seed, app = results["seed"], results["app"]
    import torch
    n = args.train_images
    rows = [
        ("whole run s (every epoch's training, evaluation and frame, the GIF's share)", whole_run_s(seed), whole_run_s(app)),
        ("training s/epoch", typical(seed["train_s"]), typical(app["train_s"])),
        ("training images/s", n / typical(seed["train_s"]), n / typical(app["train_s"])),
        ("evaluation s/epoch (10k)", typical(seed["eval_s"]), typical(app["eval_s"])),
        ("frame s (70k points)", seed["frame_s"], app["frame_s"]),
        ("GIF s (150 frames)", seed["gif_s"], app["gif_s"]),
        ("GIF MB (150 frames)", seed["gif_mb"], app["gif_mb"]),
        ("peak memory MB", seed["peak_mb"], app["peak_mb"]),
    ]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"{time.strftime('%Y-%m-%d')} | {device} | torch {torch.__version__} | python {platform.python_version()}")
    print(f"{n} training images x {args.epochs} epochs, batch {args.batch_size}; app: {app['speed']}")
    print("| what | seed loop | this app | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, a, b in rows:
        ratio = b / a if "images/s" in name else a / b
        print(f"| {name} | {a:.3f} | {b:.3f} | {ratio:.2f}x |")
    print(f"| 3-D frame s (70k points, 4,000 per panel drawn; target < 0.3) | — | {app['frame3d_s']:.3f} | — |")


if __name__ == "__main__":
    main()
