"""The FFT convolution against PyTorch's direct one, a hand-written loop and
finite differences; and where LeNets++ uses it."""

import pytest
import torch
import torch.nn.functional as F

import nets
from clviz import fftconv
from clviz.fftconv import fft_conv2d
from nets import LeNetsPP

# LeNets++'s six convs: (in, out, height = width).
SHAPES = [(1, 32, 28), (32, 32, 28), (32, 64, 14), (64, 64, 14), (64, 128, 7), (128, 128, 7)]


def loop_conv(x, w):
    """conv2d with padding k // 2, written out: y[b,o,i,j] = sum_{c,u,v} x[b,c,i+u-p,j+v-p] w[o,c,u,v]."""
    batch, channels, height, width = x.shape
    out_channels, _, k, _ = w.shape
    p = k // 2
    y = torch.zeros(batch, out_channels, height, width, dtype=x.dtype)
    for i in range(height):
        for j in range(width):
            for u in range(k):
                for v in range(k):
                    if 0 <= i + u - p < height and 0 <= j + v - p < width:
                        y[:, :, i, j] += x[:, :, i + u - p, j + v - p] @ w[:, :, u, v].T
    return y


def test_the_fft_convolution_is_the_written_out_sum():
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 7, 7, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    assert torch.allclose(fft_conv2d(x, w), loop_conv(x, w), atol=1e-10)


@pytest.mark.parametrize("k", [3, 5])
def test_non_square_maps_and_other_kernel_sizes_match_the_direct_conv(k):
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 7, 6, dtype=torch.float64), torch.randn(4, 3, k, k, dtype=torch.float64)
    assert torch.allclose(fft_conv2d(x, w), F.conv2d(x, w, padding=k // 2), atol=1e-10)
    assert torch.allclose(fft_conv2d(x[..., :5, :], w), F.conv2d(x[..., :5, :], w, padding=k // 2), atol=1e-10)


def test_the_fft_convolutions_gradients_pass_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)  # not square: both sizes are kept apart
    w = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_conv2d, (x, w))
    w3 = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)  # another kernel size, another shift
    assert torch.autograd.gradcheck(fft_conv2d, (x, w3))


@pytest.mark.parametrize("in_channels, out_channels, size", SHAPES)
def test_each_lenets_conv_and_its_gradients_match_the_direct_conv_in_fp32(in_channels, out_channels, size):
    torch.manual_seed(0)
    x = torch.randn(4, in_channels, size, size, requires_grad=True)
    w = (torch.randn(out_channels, in_channels, 5, 5) / (5 * in_channels ** 0.5)).requires_grad_()
    grad_y = torch.randn(4, out_channels, size, size)
    ours = fft_conv2d(x, w)
    theirs = F.conv2d(x, w, padding=2)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.detach().abs().max()))
    for a, b in zip(torch.autograd.grad(ours, (x, w), grad_y), torch.autograd.grad(theirs, (x, w), grad_y)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_the_same_bits_with_one_thread_and_with_two():
    """A sweep's members train with fewer threads under --workers and must reproduce the sequential sweep."""
    torch.manual_seed(0)
    x = torch.randn(30, 64, 14, 14, requires_grad=True)
    w = torch.randn(64, 64, 5, 5, requires_grad=True)
    grad_y = torch.randn(30, 64, 14, 14)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            y = fft_conv2d(x, w)
            results.append((y, *torch.autograd.grad(y, (x, w), grad_y)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_a_transform_too_small_to_hold_the_padding_would_be_caught(monkeypatch):
    """The comparison above can fail: one size short, the circular convolution wraps into the kept outputs."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 14, 14), torch.randn(4, 3, 5, 5)
    monkeypatch.setattr(fftconv, "fft_size", lambda length, padding: length + padding - 1)
    assert not torch.allclose(fft_conv2d(x, w), F.conv2d(x, w, padding=2), atol=1e-3)


def test_channels_last_in_channels_last_out():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(16, 8, 5, 5, requires_grad=True)
    y = fft_conv2d(x, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, F.conv2d(x, w, padding=2), atol=1e-4)
    (grad_x,) = torch.autograd.grad(y, x, torch.ones_like(y).contiguous(memory_format=torch.channels_last))
    assert grad_x.is_contiguous(memory_format=torch.channels_last)


def test_what_it_cannot_do_is_one_clear_error():
    with pytest.raises(ValueError, match="odd square kernel"):
        fft_conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 4, 4))
    with pytest.raises(ValueError, match=r"a batch \(B, C, H, W\)"):
        fft_conv2d(torch.zeros(3, 8, 8), torch.zeros(4, 3, 5, 5))
    with pytest.raises(ValueError, match="float32 or float64 .* got torch.bfloat16"):
        fft_conv2d(torch.zeros(1, 3, 8, 8, dtype=torch.bfloat16), torch.zeros(4, 3, 5, 5, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="must index bias-free 'same' convs"):
        LeNetsPP().use_conv_kernel(fft_conv2d, (6,))


def test_the_model_trains_the_chosen_convs_through_the_kernel_and_evaluates_directly():
    model = LeNetsPP()
    calls = []

    def kernel(x, weight):
        calls.append(tuple(weight.shape))
        return F.conv2d(x, weight, padding=2)

    model.use_conv_kernel(kernel, (2, 3, 5))
    images = torch.randn(2, 1, 28, 28)
    model(images)
    assert calls == [(64, 32, 5, 5), (64, 64, 5, 5), (128, 128, 5, 5)]
    calls.clear()
    with torch.no_grad():
        model(images)  # evaluation: the direct kernel
    assert calls == []


def test_the_swappable_conv_keeps_the_checkpoint_format(monkeypatch):
    """A LeNets++ built from plain nn.Conv2d (as before the swappable kernel) loads into today's, and back."""
    ours = LeNetsPP()
    monkeypatch.setattr(nets, "Conv2d", torch.nn.Conv2d)
    plain = nets.LeNetsPP()
    assert {type(m) for m in plain.modules() if isinstance(m, torch.nn.Conv2d)} == {torch.nn.Conv2d}
    ours.load_state_dict(plain.state_dict())
    plain.load_state_dict(ours.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values()))
