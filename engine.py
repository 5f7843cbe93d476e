"""What one epoch does: the training step, evaluation, and the choices of
device and speed settings they run under. train.py strings these together."""

import logging
import math
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from centerloss import CenterLoss, scale_feature_grad
from config import Config
from data import NUM_CLASSES, Split
from nets import LeNetsPP


class Diverged(RuntimeError):
    """The loss stopped being a finite number."""


# ---------- device and speed settings ----------

def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix maths in hardware. Without them bf16 is
    emulated on the CPU and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Speed:
    """The resolved speed switches ('auto' decided) for one device."""
    bf16: bool
    channels_last: bool
    cuda_graphs: bool
    threads: int
    fused_prelu: bool = False
    fused_prelu_note: str = ""  # why auto left it off, when that is worth saying

    def describe(self) -> str:
        fused = "on" if self.fused_prelu else "off" + (f" ({self.fused_prelu_note})" if self.fused_prelu_note else "")
        return (f"bf16 autocast {'on' if self.bf16 else 'off'}, channels_last {'on' if self.channels_last else 'off'}, "
                f"fused PReLU {fused}, cuda graphs {'on' if self.cuda_graphs else 'off'}, {self.threads} CPU threads")


# Compiling the fused PReLU costs ~20 s on a 2-core CPU the first time (~2 s
# once torch's on-disk cache has it) and saves ~30 ms per step of 100 images:
# worth it from about a thousand steps on.
FUSED_PRELU_MIN_STEPS = 1000


def compiled_prelu():
    """F.prelu through torch.compile: one generated loop for the forward and one
    for the backward, where eager PReLU's backward is slow on the CPU.
    dynamic=True: the three stages and a short last batch share one kernel.
    torch caches it per process, so calling this again costs nothing."""
    return torch.compile(F.prelu, dynamic=True)


def fused_prelu_problem(device: torch.device, bf16: bool, channels_last: bool) -> Optional[str]:
    """Compile the fused PReLU by running one small training step of a throwaway
    network, in the run's dtype and layout; None if it worked, else why not.
    Doing it here finds a missing C++ compiler at start-up, not mid-epoch."""
    inductor_log = logging.getLogger("torch._inductor")  # a failed compile would add its own warning lines
    level = inductor_log.level
    inductor_log.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):  # the probe's weights must not shift the run's seeded draws
            probe = LeNetsPP().to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            probe.use_prelu_kernel(compiled_prelu())
            images = torch.zeros(2, 1, 28, 28, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
                features, _ = probe(images.contiguous(memory_format=torch.channels_last) if channels_last else images)
            features.float().sum().backward()
    except Exception as err:  # torch.compile fails in many ways (no compiler, no headers, ...)
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else 'no message'}"
    finally:
        inductor_log.setLevel(level)
    return None


def resolve_speed(cfg: Config, device: torch.device, train_steps: Optional[int] = None) -> Speed:
    """`train_steps`: how many training steps this run has left (for the fused
    PReLU's auto rule); None when unknown, which counts as a long run."""
    on_cuda = device.type == "cuda"
    bf16 = {"on": True, "off": False}.get(cfg.bf16, on_cuda or cpu_has_native_bf16())
    # channels_last measured faster with bf16 on both a 2-core AVX512-BF16 CPU
    # and the GPU; in fp32 on the CPU it helps less, so auto follows bf16.
    channels_last = {"on": True, "off": False}.get(cfg.channels_last, bf16)
    if cfg.cuda_graphs == "on" and not on_cuda:
        raise ValueError("--cuda-graphs on needs a CUDA GPU (this run is on the CPU); use --cuda-graphs auto or off")
    cuda_graphs = on_cuda and cfg.cuda_graphs != "off"
    threads = cfg.num_threads or torch.get_num_threads()  # torch's default: one per physical core
    fused, note = resolve_fused_prelu(cfg.fused_prelu, device, bf16, channels_last, train_steps)
    return Speed(bf16=bf16, channels_last=channels_last, cuda_graphs=cuda_graphs, threads=threads,
                 fused_prelu=fused, fused_prelu_note=note)


def resolve_fused_prelu(choice: str, device: torch.device, bf16: bool, channels_last: bool,
                        train_steps: Optional[int]) -> tuple:
    """(on?, note). auto: on for CPU runs of at least FUSED_PRELU_MIN_STEPS steps
    when a C++ compiler is on the PATH and the kernel compiles; on a GPU the
    eager kernels are not where the time goes, so auto leaves it off there."""
    if choice == "off":
        return False, ""
    if choice == "auto":
        if device.type != "cpu":
            return False, ""
        if train_steps is not None and train_steps < FUSED_PRELU_MIN_STEPS:
            return False, f"run shorter than {FUSED_PRELU_MIN_STEPS} steps"
        if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            return False, "no C++ compiler found"
    problem = fused_prelu_problem(device, bf16, channels_last)
    if problem and choice == "on":
        raise ValueError(f"--fused-prelu on: torch.compile could not build the kernel ({problem}); "
                         "use --fused-prelu off (or auto, which falls back by itself)")
    return (False, f"torch.compile failed: {problem}") if problem else (True, "")


def autocast(device: torch.device, speed: Speed):
    # No weight-cast cache: a cache filled during graph capture would hand stale
    # copies to later replays (PyTorch's CUDA-graph notes). Eager casts once per forward anyway.
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if speed.bf16 else nullcontext()


def to_layout(images: torch.Tensor, speed: Speed) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if speed.channels_last else images


# ---------- the parts that train ----------

@dataclass
class Parts:
    model: LeNetsPP
    center_loss: CenterLoss
    net_optimizer: torch.optim.Optimizer
    center_optimizer: Optional[torch.optim.Optimizer]  # None for the paper's update rule
    scheduler: torch.optim.lr_scheduler.StepLR
    # Runtime only, never saved: what the steps write into, and the captured step.
    buffers: Optional["StepBuffers"] = None
    graph: Optional["GraphedStep"] = None

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


def build_parts(cfg: Config, device: torch.device, speed: Speed) -> Parts:
    """Weights and centers drawn from the global RNG: seed it first."""
    model = LeNetsPP(feat_dim=cfg.feat_dim, num_classes=NUM_CLASSES, classifier_bias=cfg.classifier_bias,
                     head=cfg.head, head_scale=cfg.head_scale, head_margin=cfg.head_margin)
    model = model.to(device, memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)
    if speed.fused_prelu:
        model.use_prelu_kernel(compiled_prelu())
    center_loss = CenterLoss(NUM_CLASSES, cfg.feat_dim, update=cfg.center_update, alpha=cfg.center_alpha).to(device)
    net_optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Plain SGD for the centers: no momentum, no weight decay (decay would drag them to the origin).
    center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=cfg.center_lr) if cfg.center_update == "sgd" else None
    scheduler = torch.optim.lr_scheduler.StepLR(net_optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    return Parts(model, center_loss, net_optimizer, center_optimizer, scheduler)


# ---------- one epoch ----------

@dataclass
class EpochResult:
    nll: float
    center_loss: float
    accuracy: float  # percent
    features: torch.Tensor  # (N, feat_dim) float32 on the CPU, in dataset order, as seen while training
    step_losses: list = field(default_factory=list)  # (nll, center) per step, only if asked for


class StepBuffers:
    """Device tensors the training steps over `train` accumulate into: loss sums
    and correct count (3,), and every training image's feature (N, feat_dim).
    They outlive the epoch because a captured graph writes to fixed addresses
    (and reads `train`'s)."""

    def __init__(self, train: Split, feat_dim: int):
        self.train = train
        self.totals = torch.zeros(3, device=train.images.device)  # nll * n, center * n, correct
        self.features = torch.zeros(len(train), feat_dim, device=train.images.device)


def forward_backward(parts: Parts, train: Split, cfg: Config, speed: Speed, index: torch.Tensor) -> tuple:
    """Gradients of one batch; returns (nll, center loss, features, log_probs, labels)."""
    model, device = parts.model, train.images.device
    images, labels = to_layout(train.images[index], speed), train.labels[index]
    with autocast(device, speed):
        features, log_probs = model(images)
    nll = F.nll_loss(model.margin_log_probs(features, log_probs, labels), labels)
    pull = parts.center_loss(scale_feature_grad(features, cfg.center_loss_weight), labels)
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


class GraphedStep:
    """The whole training step for one full batch (gather the images, forward,
    loss, backward, clipping, both optimizer steps or Eq. 4, the epoch sums)
    recorded once as a CUDA graph and replayed: one launch per step instead of
    hundreds. Same code as the eager step, run on a fixed index buffer.

    The first WARMUP_STEPS steps run eagerly on a side stream (PyTorch's recipe:
    lazy initialisation and the optimizer's momentum buffers must exist before
    capture). SGD's learning rate is recorded into the graph as a number, so a
    new one (StepLR) means a new capture, once per lr step.
    `record=False` runs the very same path without recording (CPU tests)."""

    WARMUP_STEPS = 3

    def __init__(self, step, batch_size: int, device: torch.device, record: bool = True):
        self.step = step  # (index buffer) -> None
        self.index = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.record, self.graph, self.lr, self.warm = record, None, None, 0
        self.captures = 0

    def __call__(self, index: torch.Tensor, lr: float) -> None:
        self.index.copy_(index)
        if self.warm < self.WARMUP_STEPS:
            self.warm += 1
            self._on_side_stream(lambda: self.step(self.index))
        elif not self.record:
            self.step(self.index)
        else:
            if self.graph is None or lr != self.lr:
                try:
                    self._capture(lr)
                except RuntimeError as err:  # recording kernels runs none of them: this batch is still to do
                    self.fall_back(err)
                    return self.step(self.index)
            self.graph.replay()

    def fall_back(self, err: Exception) -> None:
        """Go on eagerly for the rest of the run, saying why once."""
        self.record, self.graph = False, None
        warnings.warn(f"CUDA graph capture failed ({type(err).__name__}: {str(err).strip()[:160]}); "
                      "training goes on without graphs (--cuda-graphs off skips the attempt)", stacklevel=2)

    def _capture(self, lr: float) -> None:
        self.graph = None  # frees the previous graph's memory before recording a new one
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records on its own stream; nothing runs yet
            self.step(self.index)
        self.graph, self.lr = graph, lr
        self.captures += 1

    def _on_side_stream(self, work) -> None:
        if not self.record:
            return work()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            work()
        torch.cuda.current_stream().wait_stream(side)


def train_one_epoch(parts: Parts, train: Split, cfg: Config, generator: torch.Generator, speed: Speed, *,
                    epoch: int, record_steps: bool = False, show_progress: bool = True) -> EpochResult:
    """One pass over `train` (already on the device) in a random order drawn from `generator` (a CPU generator).

    Loss = NLL (with the head's margin, if any) + center loss, where the features' share of the center-loss
    gradient is scaled by lambda and the centers' is not (see centerloss.py).
    On the CPU every step checks the loss is finite before the weights move;
    on a GPU that check would stall the pipeline, so it runs once per epoch.
    With CUDA graphs every full batch replays the captured step; a short last batch runs eagerly.
    """
    device = train.images.device
    parts.model.train()
    order = torch.randperm(len(train), generator=generator).to(device)  # one copy per epoch
    if parts.buffers is None or parts.buffers.train is not train:
        parts.buffers, parts.graph = StepBuffers(train, cfg.feat_dim), None
    buffers = parts.buffers
    buffers.totals.zero_()
    graphed = speed.cuda_graphs and not record_steps
    if graphed and parts.graph is None:
        def whole_step(index):
            update_and_record(parts, cfg, buffers, index, forward_backward(parts, train, cfg, speed, index))
        parts.graph = GraphedStep(whole_step, cfg.batch_size, device, record=device.type == "cuda")
    check_each_step = device.type == "cpu" and not graphed
    step_losses = []
    batches = order.split(cfg.batch_size)
    bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, position=1,
               disable=not show_progress, dynamic_ncols=True)
    for step, index in enumerate(bar, start=1):
        if graphed and len(index) == cfg.batch_size:
            parts.graph(index, parts.net_optimizer.param_groups[0]["lr"])
            continue
        batch = forward_backward(parts, train, cfg, speed, index)
        nll, pull = batch[0], batch[1]
        if check_each_step and not torch.isfinite(nll + pull):
            raise Diverged(f"loss became {float(nll + pull)} at epoch {epoch}, step {step} "
                           f"(nll {float(nll):.4g}, center loss {float(pull):.4g})")
        update_and_record(parts, cfg, buffers, index, batch)
        if record_steps:
            step_losses.append((nll.item(), pull.item()))
        if check_each_step and (step % 20 == 0 or step == len(batches)):
            seen = min(step * cfg.batch_size, len(train))
            totals = buffers.totals.tolist()
            bar.set_postfix(nll=f"{totals[0] / seen:.3f}", center=f"{totals[1] / seen:.3f}",
                            acc=f"{100 * totals[2] / seen:.1f}%")
    totals = buffers.totals.tolist()  # the one host sync of the epoch on a GPU
    if not (math.isfinite(totals[0]) and math.isfinite(totals[1])):
        raise Diverged(f"loss became non-finite during epoch {epoch} (nll sum {totals[0]:.4g}, center sum {totals[1]:.4g})")
    n = len(train)
    features = buffers.features.to("cpu", copy=True)  # a copy also on the CPU: the buffer is reused next epoch
    return EpochResult(totals[0] / n, totals[1] / n, 100 * totals[2] / n, features, step_losses)


@torch.no_grad()
def evaluate(model: LeNetsPP, split: Split, speed: Speed, batch_size: int = 1000) -> tuple:
    """(nll, accuracy %, features (N, feat_dim) float32 on the CPU) in eval mode."""
    model.eval()
    device = split.images.device
    nll_sum, correct, features = torch.zeros((), device=device), torch.zeros((), device=device), []
    for start in range(0, len(split), batch_size):
        images = to_layout(split.images[start:start + batch_size], speed)
        labels = split.labels[start:start + batch_size]
        with autocast(device, speed):
            feats, log_probs = model(images)
        nll_sum += F.nll_loss(log_probs, labels, reduction="sum")
        correct += (log_probs.argmax(1) == labels).sum()
        features.append(feats.float())
    n = len(split)
    return nll_sum.item() / n, 100 * correct.item() / n, torch.cat(features).cpu()
