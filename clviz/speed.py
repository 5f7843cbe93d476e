"""The speed switches, apart from the plain training step: the device, bf16
autocast, channels_last, the fused (compiled) PReLU, FFT convolutions, folded
evaluation and CUDA-graph capture of the whole step. Each has an `auto` choice
and can be turned off; with all of them off the step in training.py runs
exactly as written."""

import logging
import shutil
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from clviz.config import Config, augments
from clviz.fftconv import fft_conv2d
from nets import LeNetsPP


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def pick_device(choice: str) -> torch.device:
    """auto: CUDA, else the CPU. Apple's MPS only when asked for: it has not yet
    been measured on real hardware, so auto does not pick it."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if choice == "mps" and not mps_available():
        raise ValueError("--device mps was asked for but PyTorch reports no MPS device (Apple silicon, macOS 12.3+); "
                         "use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix maths in hardware. Without them bf16 is
    emulated on the CPU and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
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
    folded_eval: bool = False
    fft_conv: bool = False

    def describe(self) -> str:
        fused = "on" if self.fused_prelu else "off" + (f" ({self.fused_prelu_note})" if self.fused_prelu_note else "")
        return (f"bf16 autocast {'on' if self.bf16 else 'off'}, channels_last {'on' if self.channels_last else 'off'}, "
                f"fused PReLU {fused}, FFT convs {'on' if self.fft_conv else 'off'}, cuda graphs {'on' if self.cuda_graphs else 'off'}, "
                f"folded evaluation {'on' if self.folded_eval else 'off'}, {self.threads} CPU thread{'s' if self.threads != 1 else ''}")


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
    bf16 = {"on": True, "off": False}.get(cfg.bf16, on_cuda or (device.type == "cpu" and cpu_has_native_bf16()))
    # channels_last measured faster with bf16 on both a 2-core AVX512-BF16 CPU
    # and the GPU; in fp32 on the CPU it helps less, so auto follows bf16.
    channels_last = {"on": True, "off": False}.get(cfg.channels_last, bf16)
    if cfg.cuda_graphs == "on" and not on_cuda:
        raise ValueError("--cuda-graphs on needs a CUDA GPU (this run is on the CPU); use --cuda-graphs auto or off")
    if cfg.cuda_graphs == "on" and augments(cfg):
        raise ValueError("--cuda-graphs on cannot record the augmentation's random draws; set the --augment-* "
                         "flags to 0 or use --cuda-graphs off")
    if cfg.cuda_graphs == "on" and cfg.lr_schedule != "step":
        raise ValueError(f"--cuda-graphs on needs a learning rate that is constant within an epoch (a captured step "
                         f"holds it), but --lr-schedule {cfg.lr_schedule} changes it every step; use --lr-schedule step "
                         "or --cuda-graphs off")
    # The captured step has not yet run on a real GPU: until its GPU test has passed
    # there, auto leaves it off and `on` is the user's own choice.
    cuda_graphs = on_cuda and cfg.cuda_graphs == "on"
    threads = cfg.num_threads or torch.get_num_threads()  # torch's default: one per physical core
    fused, note = resolve_fused_prelu(cfg.fused_prelu, device, bf16, channels_last, train_steps)
    if cfg.folded_eval == "on" and not (device.type == "cpu" and torch.backends.mkldnn.is_available()):
        raise ValueError(f"--folded-eval on needs the CPU with oneDNN (this run is on {device.type}); "
                         "use --folded-eval auto or off")
    # Measured on a 2-core AVX2 CPU in fp32 (bench/RESULTS.md); with bf16 autocast evaluation stays as it was.
    folded = cfg.folded_eval == "on" or (cfg.folded_eval == "auto" and device.type == "cpu" and not bf16
                                          and torch.backends.mkldnn.is_available())
    return Speed(bf16=bf16, channels_last=channels_last, cuda_graphs=cuda_graphs, threads=threads,
                 fused_prelu=fused, fused_prelu_note=note, folded_eval=folded,
                 fft_conv=resolve_fft_conv(cfg.fft_conv, device, bf16))


# Which of LeNets++'s six convs train through the FFT (indices into LeNetsPP.convs()).
# Forward + backward per batch of 100, direct (oneDNN) against FFT, on a 2-core
# AVX2 CPU in fp32, where the direct convs already run at ~200 GFLOP/s, the
# cores' FMA peak: 32->64 at 14x14 31.5 -> 24.1 ms, 64->64 at 14x14 59.6 -> 36.7,
# 64->128 at 7x7 30.6 -> 24.2, 128->128 at 7x7 59.8 -> 38.4. The two 28x28 convs
# stay direct: 32->32 64.9 against 73.0 ms (its spectra are 4x larger to move),
# and 1->32 8.4 against 26.8 (one input channel: no channel mixing to save).
# The whole step: ~304 -> 233 ms.
FFT_CONV_LAYERS = (2, 3, 4, 5)


def resolve_fft_conv(choice: str, device: torch.device, bf16: bool) -> bool:
    """auto: on for fp32 training on an x86 CPU whose best instruction set is
    AVX2, where it was measured; off elsewhere (AVX-512, ARM, older x86: not
    measured). torch.fft has no bf16 on the CPU, hence fp32 only."""
    if choice == "on" and (device.type != "cpu" or bf16):
        raise ValueError(f"--fft-conv on needs fp32 training on the CPU (this run: {device.type}"
                         f"{', bf16 autocast on' if bf16 else ''}); use --fft-conv auto or off"
                         + (", or --bf16 off" if bf16 and device.type == "cpu" else ""))
    if choice == "auto":
        return device.type == "cpu" and not bf16 and torch.backends.cpu.get_cpu_capability() == "AVX2"
    return choice == "on"


def apply_conv_kernels(model: LeNetsPP, speed: Speed) -> None:
    model.use_conv_kernel(fft_conv2d if speed.fft_conv else None, FFT_CONV_LAYERS)


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


# ---------- folded evaluation (CPU) ----------

class FoldedNet:
    """An evaluation-only copy of a LeNetsPP for the CPU, in fp32, same maths as
    `model.eval()` up to float rounding (~1e-6 relative):

    - each BatchNorm is folded into the conv before it:
      w' = w * g / sqrt(v + eps) per output channel, b' = (b - mu) * g / sqrt(v + eps) + beta;
    - the conv weights are reordered once into oneDNN's blocked layout, and the
      activations stay in it from the first conv to the last max-pool.

    Eager evaluation instead runs a separate BatchNorm pass and converts every
    activation into and out of that layout around each conv. Built from the
    model's current weights, so build a new one after the weights change
    (once per evaluation costs well under a millisecond)."""

    def __init__(self, model: LeNetsPP):
        self.model = model
        self.layers: list = []
        for stage in model.stages:
            modules = list(stage)
            i = 0
            while i < len(modules):
                module = modules[i]
                if isinstance(module, nn.Conv2d) and i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d):
                    self.layers.append(self._conv(fuse_conv_bn_eval(module, modules[i + 1])))
                    i += 2
                    continue
                if isinstance(module, nn.Conv2d):
                    self.layers.append(self._conv(module))
                elif isinstance(module, nn.PReLU):
                    weight = module.weight.detach()
                    self.layers.append(lambda x, w=weight: F.prelu(x, w))
                elif isinstance(module, nn.MaxPool2d):
                    self.layers.append(module)
                else:
                    raise TypeError(f"FoldedNet does not know {type(module).__name__}")
                i += 1

    @staticmethod
    def _conv(conv: nn.Conv2d) -> Callable:
        weight = torch._C._nn.mkldnn_reorder_conv2d_weight(conv.weight.detach().to_mkldnn(), conv.padding, conv.stride,
                                                           conv.dilation, conv.groups)
        bias = None if conv.bias is None else conv.bias.detach().to_mkldnn()
        padding, stride, dilation, groups = conv.padding, conv.stride, conv.dilation, conv.groups
        return lambda x: torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().contiguous().to_mkldnn()
        for layer in self.layers:
            x = layer(x)
        features = self.model.embed(torch.flatten(x.to_dense(), 1))
        return features, F.log_softmax(self.model.classifier(features), dim=1)


def eval_forward(model: LeNetsPP, speed: Speed) -> Callable:
    """What evaluation calls on a batch: the folded copy when the switch is on, else the model itself."""
    return FoldedNet(model) if speed.folded_eval else model


# ---------- CUDA graphs ----------

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
