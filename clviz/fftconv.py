"""Convolution through the FFT, for the CPU training step.

A 5x5 'same' convolution costs 25 * C_in * C_out multiply-adds per output
pixel done directly. Through the FFT each image-channel is transformed once,
the channel mixing becomes one small complex matrix product per frequency,
and on a 14x14 map (transform size 16, 16 x 9 frequencies after the real
FFT's symmetry) that product costs ~8x fewer operations than the direct
convolution; the backward pass reuses the transforms for both gradients.
On a CPU whose direct convolutions already run at the FMA peak, fewer
operations is the only way left to a faster step (per-conv times beside
speed.FFT_CONV_LAYERS and in bench/RESULTS.md). Forward and first
derivatives only: the backward pass is not itself differentiable.

Maths, for input x (B, C, H, W), weight w (O, C, k, k), padding p = k // 2:

    y[b, o, i, j] = sum_{c,u,v} x[b, c, i + u - p, j + v - p] * w[o, c, u, v]   (PyTorch's conv2d)

With N >= H + p and N >= W + p, zero-padding to N x N makes the circular
correlation equal the linear one on the kept H x W outputs, so with
X = rfft2(x, N), Wh = rfft2(w, N) and the shift S[f] = exp(-2 pi i p (f_h + f_w) / N):

    Y[b, o, f] = sum_c X[b, c, f] * conj(Wh[o, c, f]) * S[f],   y = irfft2(Y)[:H, :W]
    dL/dx      = irfft2(sum_o G[b, o, f] * conj(K[o, c, f]))[:H, :W],   G = rfft2(dL/dy, N), K = conj(Wh) S
    dL/dw      = irfft2(conj(sum_b conj(X[b, c, f]) * G[b, o, f]) * S)[:k, :k]

K and dL/dw involve only the k x k taps, so each is one small matrix product
(kernel_transforms), not an N x N transform.

Same results as F.conv2d up to float rounding (~1e-6 relative in fp32).
"""

import math

import torch
from torch.autograd.function import once_differentiable


def fft_size(length: int, padding: int) -> int:
    """The smallest 2^a 3^b 5^c >= length + padding: no wrap-around reaches the kept outputs."""
    n = length + padding
    while True:
        m = n
        for prime in (2, 3, 5):
            while m % prime == 0:
                m //= prime
        if m == 1:
            return n
        n += 1


def pair_weights(n: int) -> torch.Tensor:
    """c_g (n // 2 + 1,) float64: 1 for the columns an rfft holds once (g = 0, and
    g = n / 2 when n is even), 2 for those that stand for a conjugate pair."""
    pairs = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
    pairs[0] = 1.0
    if n % 2 == 0:
        pairs[-1] = 1.0
    return pairs


def kernel_transforms(n: int, k: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """(E (F, k*k), D (k*k, F)), F = n * (n // 2 + 1) frequencies (f, g), taps (u, v), p = k // 2.

    A k x k kernel has only k^2 taps, so its spectrum and the gradient's taps
    are one small matrix product each, not n x n transforms:
        E[(f, g), (u, v)] = e(f, u) e(g, v),  e(f, u) = exp(2 pi i f (u - p) / n)
        K = E w   (= conj(rfft2(w, n)) times the shift S)
        D[(u, v), (f, g)] = conj(e(f, u) e(g, v)) c_g / n^2,   dL/dw = Re(D M)
    with c_g from pair_weights."""
    taps = torch.arange(k, dtype=torch.float64) - k // 2
    e = torch.exp(2j * math.pi * torch.arange(n, dtype=torch.float64)[:, None] * taps / n)  # (n, k)
    half = n // 2 + 1
    to_spectrum = (e[:, None, :, None] * e[None, :half, None, :]).reshape(n * half, k * k)
    from_spectrum = (to_spectrum.conj() * pair_weights(n).repeat(n)[:, None]).T / (n * n)
    return to_spectrum.to(dtype=dtype, device=device), from_spectrum.to(dtype=dtype, device=device)


def frequency_major(spectrum: torch.Tensor) -> torch.Tensor:
    """(B, C, n, nf) -> (n * nf, B, C) contiguous: one (B, C) matrix per frequency, for bmm."""
    batch, channels, n, nf = spectrum.shape
    return spectrum.permute(2, 3, 0, 1).reshape(n * nf, batch, channels).contiguous()


def inverse_transforms(n: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """(R (height, n), Q (width, n // 2 + 1)): the inverse rfft2 at the kept outputs only,
    y[i, j] = Re(sum_{f,g} R[i, f] Z[f, g] Q[j, g]), R[i, f] = exp(2 pi i f i / n),
    Q[j, g] = c_g exp(2 pi i g j / n) / n^2 (c_g from pair_weights)."""
    rows = torch.exp(2j * math.pi * torch.arange(height, dtype=torch.float64)[:, None] * torch.arange(n) / n)
    cols = torch.exp(2j * math.pi * torch.arange(width, dtype=torch.float64)[:, None] * torch.arange(n // 2 + 1) / n)
    return rows.to(dtype=dtype, device=device), (cols * pair_weights(n) / (n * n)).to(dtype=dtype, device=device)


def spatial(mixed: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(n * nf, B, C) spectra -> (B, C, height, width) real, contiguous, with
    (rows, cols) = inverse_transforms(n, height, width, ...).

    Two matrix products instead of torch.fft.irfft2: they compute only the kept
    outputs, read the frequency-major layout as it is, and give the same bits
    with any number of threads (MKL's inverse FFT did not: 1 and 2 threads
    differed in the last bit, so a sweep's members would not reproduce across
    --workers)."""
    _, batch, channels = mixed.shape
    (height, n), (width, half) = rows.shape, cols.shape
    along_h = rows @ mixed.view(n, -1)                                            # (height, nf * B * C)
    both = torch.matmul(cols, along_h.view(height, half, batch * channels))       # (height, width, B * C)
    return both.real.view(height, width, batch, channels).permute(2, 3, 0, 1).contiguous()


class FFTConv2d(torch.autograd.Function):
    """Stride 1, 'same' padding k // 2, no bias, odd square kernels (LeNets++'s convs)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        out_channels, in_channels, k, _ = weight.shape
        padding = k // 2
        n = fft_size(max(height, width), padding)
        dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        to_spectrum, from_spectrum = kernel_transforms(n, k, dtype, x.device)
        rows, cols = inverse_transforms(n, height, width, dtype, x.device)
        xs = frequency_major(torch.fft.rfft2(x, s=(n, n)))                                    # (F, B, C)
        taps = weight.permute(2, 3, 1, 0).reshape(k * k, in_channels * out_channels)
        ks = (to_spectrum @ taps.to(dtype)).view(-1, in_channels, out_channels)              # (F, C, O)
        y = spatial(torch.bmm(xs, ks), rows, cols)
        ctx.save_for_backward(xs, ks, from_spectrum, rows, cols)
        ctx.sizes = (n, k)
        return y.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        xs, ks, from_spectrum, rows, cols = ctx.saved_tensors
        n, k = ctx.sizes
        gs = frequency_major(torch.fft.rfft2(grad_y, s=(n, n)))                               # (F, B, O)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = spatial(torch.bmm(gs, ks.mH), rows, cols)
            if is_channels_last(grad_y):
                grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        grad_k = None
        if ctx.needs_input_grad[1]:
            mixed = torch.bmm(xs.mH, gs)                                                      # (F, C, O)
            in_channels, out_channels = mixed.shape[1:]
            taps = (from_spectrum @ mixed.view(-1, in_channels * out_channels)).real         # (k * k, C * O)
            grad_k = taps.view(k, k, in_channels, out_channels).permute(3, 2, 0, 1).contiguous()
        return grad_x, grad_k


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels_last (and not also plain contiguous, as when H = W = 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def fft_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv2d(x, weight, padding=k // 2) through the FFT; x (B, C, H, W), weight (O, C, k, k)."""
    k = weight.shape[-1]
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[-2] != k or k % 2 == 0 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"fft_conv2d needs a batch (B, C, H, W) and an odd square kernel matching its channels; "
                         f"got input {tuple(x.shape)} and weight {tuple(weight.shape)}")
    if x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"fft_conv2d needs float32 or float64 input and weight of one dtype (torch.fft has no "
                         f"bf16/fp16 on the CPU); got {x.dtype} and {weight.dtype}")
    return FFTConv2d.apply(x, weight)
