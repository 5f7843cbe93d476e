"""What one epoch does: the plain training step, the epoch loop around it, and
evaluation. The speed switches (speed.py) wrap this step without changing it.

    Parts          what a checkpoint holds: model, centers, optimizers, scheduler
    EpochRunner    what one training split needs at run time (never saved): the
                   device buffers the steps accumulate into, and the captured step
"""

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from centerloss import CenterLoss, scale_feature_grad
from clviz.config import Config, augments
from clviz.data import NUM_CLASSES, Split
from clviz.errors import Diverged
from clviz.speed import GraphedStep, Speed, apply_conv_kernels, autocast, compiled_prelu, eval_forward, to_layout
from nets import LeNetsPP

# ---------- the parts that train ----------

@dataclass
class Parts:
    model: LeNetsPP
    center_loss: CenterLoss
    net_optimizer: torch.optim.Optimizer
    center_optimizer: Optional[torch.optim.Optimizer]  # None for the paper's update rule
    scheduler: torch.optim.lr_scheduler.StepLR

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "center_loss": self.center_loss.state_dict(),
            "net_optimizer": self.net_optimizer.state_dict(),
            "center_optimizer": self.center_optimizer.state_dict() if self.center_optimizer else None,
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.center_loss.load_state_dict(state["center_loss"])
        self.net_optimizer.load_state_dict(state["net_optimizer"])
        if self.center_optimizer:
            self.center_optimizer.load_state_dict(state["center_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def center_loss_weight_at(cfg: Config, t: float) -> float:
    """lambda at training time t (in epochs from the start, 0 <= t < epochs):
    0 for the first `center_loss_delay` epochs, then a linear rise over
    `center_loss_ramp` epochs to `center_loss_weight`, then constant.
    The delay lets softmax separate the classes before the pull starts:
    pulled from step 0, the 2-D features collapse onto the (still mixed)
    centers, or diverge at lambda 1."""
    if t < cfg.center_loss_delay:
        return 0.0
    if t < cfg.center_loss_delay + cfg.center_loss_ramp:
        return cfg.center_loss_weight * (t - cfg.center_loss_delay) / cfg.center_loss_ramp
    return cfg.center_loss_weight


def lr_at(cfg: Config, t: float, steps_per_epoch: int = 1) -> float:
    """The 'cosine' schedule's network learning rate at time t (in epochs):
    lr * (1 + cos(pi * t / epochs)) / 2, from lr at the start to ~0 at the end,
    times min(1, (t + one step) / lr_warmup) during a warm-up."""
    rate = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t / cfg.epochs))
    if cfg.lr_warmup > 0:
        rate *= min(1.0, (t + 1.0 / steps_per_epoch) / cfg.lr_warmup)
    return rate


def augment(images: torch.Tensor, cfg: Config, generator: torch.Generator) -> torch.Tensor:
    """A random affine map per image (B, 1, 28, 28), on the images' device:
    rotation up to +-augment_rotate degrees, zoom by [1 - s, 1 + s], shift up to
    +-augment_shift pixels. The draws come from the CPU `generator` (the
    checkpointed data-order one, so a resumed run draws the same). Pixels from
    outside the image take the border's value (background, after normalising)."""
    n = images.shape[0]

    def uniform(half_width):
        return (torch.rand(n, generator=generator) * 2 - 1) * half_width

    angle = uniform(math.radians(cfg.augment_rotate))
    zoom = 1.0 + uniform(cfg.augment_scale)
    shift = uniform(cfg.augment_shift * 2 / images.shape[-1])  # affine_grid's coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift_y = uniform(cfg.augment_shift * 2 / images.shape[-2])
    theta = torch.stack([torch.stack([cos, -sin, shift], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def build_parts(cfg: Config, device: torch.device, speed: Speed, num_classes: int = NUM_CLASSES) -> Parts:
    """Weights and centers drawn from the global RNG: seed it first. `num_classes`: the
    known classes (fewer than 10 when some are held out as unknowns)."""
    model = LeNetsPP(feat_dim=cfg.feat_dim, num_classes=num_classes, classifier_bias=cfg.classifier_bias,
                     head=cfg.head, head_scale=cfg.head_scale, head_margin=cfg.head_margin)
    model = model.to(device, memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)
    if speed.fused_prelu:
        model.use_prelu_kernel(compiled_prelu())
    apply_conv_kernels(model, speed)
    center_loss = CenterLoss(num_classes, cfg.feat_dim, update=cfg.center_update, alpha=cfg.center_alpha,
                             normalize=cfg.center_loss_normalize).to(device)
    net_optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Plain SGD for the centers: no momentum, no weight decay (decay would drag them to the origin).
    center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=cfg.center_lr) if cfg.center_update == "sgd" else None
    # Under 'cosine' the runner sets every step's lr (lr_at) and StepLR stays inert (gamma 1),
    # so checkpoints have the same parts either way.
    gamma = cfg.lr_gamma if cfg.lr_schedule == "step" else 1.0
    scheduler = torch.optim.lr_scheduler.StepLR(net_optimizer, step_size=cfg.lr_step, gamma=gamma)
    return Parts(model, center_loss, net_optimizer, center_optimizer, scheduler)


# ---------- one epoch ----------

@dataclass
class EpochResult:
    nll: float
    center_loss: float
    accuracy: float  # percent
    features: torch.Tensor  # (N, feat_dim) float32 on the CPU, in dataset order, as seen while training
    center_loss_weight: float  # lambda at the epoch's last step (the warm-up shows here)


class StepBuffers:
    """Device tensors the training steps over `train` accumulate into: loss sums
    and correct count (3,), and every training image's feature (N, feat_dim).
    They outlive the epoch because a captured graph writes to fixed addresses
    (and reads `train`'s)."""

    def __init__(self, train: Split, feat_dim: int):
        self.train = train
        self.totals = torch.zeros(3, device=train.images.device)  # nll * n, center * n, correct
        self.features = torch.zeros(len(train), feat_dim, device=train.images.device)


def forward_backward(parts: Parts, train: Split, speed: Speed, index: torch.Tensor, weight: torch.Tensor,
                     images: Optional[torch.Tensor] = None) -> tuple:
    """Gradients of one batch at center-loss weight `weight` (lambda, a 0-dim
    device tensor); `images` replaces train.images[index] (augmented ones).
    Returns (nll, center loss, features, log_probs, labels)."""
    model, device = parts.model, train.images.device
    images = to_layout(train.images[index] if images is None else images, speed)
    labels = train.labels[index]
    with autocast(device, speed):
        features, log_probs = model(images)
    nll = F.nll_loss(model.margin_log_probs(features, log_probs, labels), labels)
    pull = parts.center_loss(scale_feature_grad(features, weight), labels)
    parts.net_optimizer.zero_grad(set_to_none=True)
    if parts.center_optimizer:
        parts.center_optimizer.zero_grad(set_to_none=True)
    (nll + pull).backward()
    return nll, pull, features, log_probs, labels


def update_and_record(parts: Parts, cfg: Config, buffers: StepBuffers, index: torch.Tensor, batch: tuple) -> None:
    """Move the weights and centers, and add the batch to the epoch's sums. No host sync."""
    nll, pull, features, log_probs, labels = batch
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.grad_clip)  # norm and scaling stay on the device
    parts.net_optimizer.step()
    if parts.center_optimizer:
        parts.center_optimizer.step()
    else:
        parts.center_loss.update_centers(features.detach().float(), labels)
    with torch.no_grad():
        n = labels.shape[0]
        buffers.totals += torch.stack([nll.detach() * n, pull.detach() * n, (log_probs.argmax(1) == labels).sum().float()])
        buffers.features[index] = features.detach().float()


class EpochRunner:
    """Trains `parts` on one training split (already on the device), epoch by
    epoch. It owns the split's StepBuffers, lambda as a device scalar (set
    before every step, so a captured step reads the current value) and, with
    CUDA graphs, the captured step: they sit at fixed addresses, so they
    belong to this split only."""

    def __init__(self, parts: Parts, train: Split, cfg: Config, speed: Speed):
        self.parts, self.train, self.cfg, self.speed = parts, train, cfg, speed
        self.device = train.images.device
        self.buffers = StepBuffers(train, cfg.feat_dim)
        self.weight = torch.zeros((), device=self.device)
        self.graph = None
        if speed.cuda_graphs:
            self.graph = GraphedStep(self.whole_step, cfg.batch_size, self.device, record=self.device.type == "cuda")

    def whole_step(self, index: torch.Tensor) -> None:
        """One step with no host sync: what a CUDA graph records."""
        batch = forward_backward(self.parts, self.train, self.speed, index, self.weight)
        update_and_record(self.parts, self.cfg, self.buffers, index, batch)

    def run(self, generator: torch.Generator, *, epoch: int, show_progress: bool = True) -> EpochResult:
        """One pass in a random order drawn from `generator` (a CPU generator).

        Loss = NLL (with the head's margin, if any) + center loss, where the features' share of the
        center-loss gradient is scaled by lambda and the centers' is not (see centerloss.py).
        On the CPU every step checks the loss is finite before the weights move;
        on a GPU that check would stall the pipeline, so it runs once per epoch.
        With CUDA graphs every full batch replays the captured step; a short last batch runs eagerly.
        """
        cfg, parts, buffers, train = self.cfg, self.parts, self.buffers, self.train
        parts.model.train()
        order = torch.randperm(len(train), generator=generator).to(self.device)  # one copy per epoch
        buffers.totals.zero_()
        check_each_step = self.device.type == "cpu" and self.graph is None
        batches = order.split(cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, position=1,
                   disable=not show_progress, dynamic_ncols=True)
        for step, index in enumerate(bar, start=1):
            t = epoch - 1 + (step - 1) / len(batches)  # training time in epochs
            self.weight.fill_(center_loss_weight_at(cfg, t))
            if cfg.lr_schedule == "cosine":
                for group in parts.net_optimizer.param_groups:
                    group["lr"] = lr_at(cfg, t, len(batches))
            if self.graph is not None and len(index) == cfg.batch_size:
                self.graph(index, parts.net_optimizer.param_groups[0]["lr"])
                continue
            images = augment(train.images[index], cfg, generator) if augments(cfg) else None
            batch = forward_backward(parts, train, self.speed, index, self.weight, images)
            nll, pull = batch[0], batch[1]
            if check_each_step and not torch.isfinite(nll + pull):
                raise Diverged(f"loss became {float(nll + pull)} at epoch {epoch}, step {step} "
                               f"(nll {float(nll):.4g}, center loss {float(pull):.4g})")
            update_and_record(parts, cfg, buffers, index, batch)
            if check_each_step and (step % 20 == 0 or step == len(batches)):
                seen = min(step * cfg.batch_size, len(train))
                totals = buffers.totals.tolist()
                bar.set_postfix(nll=f"{totals[0] / seen:.3f}", center=f"{totals[1] / seen:.3f}",
                                acc=f"{100 * totals[2] / seen:.1f}%")
        totals = buffers.totals.tolist()  # the one host sync of the epoch on a GPU
        if not (math.isfinite(totals[0]) and math.isfinite(totals[1])):
            raise Diverged(f"loss became non-finite during epoch {epoch} "
                           f"(nll sum {totals[0]:.4g}, center sum {totals[1]:.4g})")
        n = len(train)
        features = buffers.features.to("cpu", copy=True)  # a copy also on the CPU: the buffer is reused next epoch
        return EpochResult(totals[0] / n, totals[1] / n, 100 * totals[2] / n, features, float(self.weight))


EVAL_BATCH, EVAL_BATCH_CPU = 1000, 100


class Evaluation(NamedTuple):
    nll: float
    accuracy: float  # percent
    features: torch.Tensor  # (N, feat_dim) float32 on the CPU
    confidence: torch.Tensor  # (N,) float32 on the CPU: the maximum softmax probability (open-set baseline)


@torch.no_grad()
def evaluate(model: LeNetsPP, split: Split, speed: Speed, batch_size: Optional[int] = None,
             labelled: bool = True) -> Evaluation:
    """nll, accuracy %, features and confidences in eval mode. batch_size None:
    EVAL_BATCH_CPU on the CPU, whose caches favour small batches, else EVAL_BATCH.
    `labelled` False (unknown classes, whose labels the head does not have): features and
    confidences only, nll and accuracy NaN."""
    model.eval()
    device = split.images.device
    batch_size = batch_size or (EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH)
    forward = eval_forward(model, speed)
    nll_sum, correct, features, confidence = torch.zeros((), device=device), torch.zeros((), device=device), [], []
    for start in range(0, len(split), batch_size):
        images = to_layout(split.images[start:start + batch_size], speed)
        with autocast(device, speed):
            feats, log_probs = forward(images)
        if labelled:
            labels = split.labels[start:start + batch_size]
            nll_sum += F.nll_loss(log_probs, labels, reduction="sum")
            correct += (log_probs.argmax(1) == labels).sum()
        features.append(feats.float())
        confidence.append(log_probs.float().max(1).values.exp())
    n = len(split)
    nll, accuracy = (nll_sum.item() / n, 100 * correct.item() / n) if labelled else (math.nan, math.nan)
    return Evaluation(nll, accuracy, torch.cat(features).cpu(), torch.cat(confidence).cpu())
