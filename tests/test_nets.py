import math

import pytest
import torch

from clviz.speed import compiled_prelu
from nets import HEAD_DEFAULTS, Head, LeNetsPP, PReLU


@pytest.mark.parametrize("feat_dim", [2, 3])
def test_output_shapes_and_log_probabilities(feat_dim):
    model = LeNetsPP(feat_dim=feat_dim)
    features, log_probs = model(torch.randn(5, 1, 28, 28))
    assert features.shape == (5, feat_dim) and log_probs.shape == (5, 10)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(5), atol=1e-5)


def test_architecture_matches_the_paper():
    model = LeNetsPP()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, torch.nn.PReLU) for m in model.modules()) == 6
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 3
    assert model.embed.in_features == 1152 and model.embed.out_features == 2
    assert model.classifier.bias is None
    assert LeNetsPP(classifier_bias=True).classifier.bias is not None


def test_bf16_autocast_keeps_fp32_log_probs():
    model = LeNetsPP()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, log_probs = model(torch.randn(2, 1, 28, 28))
    assert log_probs.dtype == torch.float32


# ---------- margin heads against the papers' formulas ----------




def reference_logits(kind, features, weight, labels, s, m):
    """Element by element with the math module: s*cos(theta_k); for the true
    class s*(cos - m) (CosFace) or s*cos(theta + m), continued linearly as
    s*(cos - m*sin(m)) once theta + m > pi (ArcFace)."""
    out = []
    for x, y in zip(features.tolist(), labels.tolist()):
        row = []
        for k, w in enumerate(weight.tolist()):
            cos = sum(a * b for a, b in zip(x, w)) / (math.hypot(*x) * math.hypot(*w))
            cos = max(-1.0, min(1.0, cos))
            if k == y and kind == "cosface":
                cos -= m
            elif k == y and kind == "arcface":
                theta = math.acos(cos)
                cos = math.cos(theta + m) if theta + m <= math.pi else cos - m * math.sin(m)
            row.append(s * cos)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_heads_match_the_papers_formulas(kind):
    torch.manual_seed(0)
    head = Head(2, 10, kind, scale=16.0, margin=0.4)
    features, labels = torch.randn(64, 2) * 5, torch.randint(0, 10, (64,))
    got = head(features, labels).double()
    expected = reference_logits(kind, features, head.weight.detach(), labels, 16.0, 0.4)
    assert torch.allclose(got, expected, atol=1e-4)
    plain = head(features).double()  # no labels: no margin (evaluation)
    assert torch.allclose(plain, reference_logits(kind, features, head.weight.detach(), labels, 16.0, 0.0), atol=1e-4)
    assert (got <= plain + 1e-5).all() and (got.gather(1, labels[:, None]) < plain.gather(1, labels[:, None])).all()


def test_head_defaults_come_from_the_papers():
    assert HEAD_DEFAULTS == {"cosface": (30.0, 0.35), "arcface": (30.0, 0.5)}
    head = Head(2, 10, "arcface")
    assert (head.scale, head.margin) == (30.0, 0.5)
    with pytest.raises(ValueError, match="no bias"):
        Head(2, 10, "cosface", bias=True)


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_head_gradients_are_finite_at_the_angle_boundaries(kind):
    """theta = 0 (feature on its class weight), theta = pi (opposite), theta = pi - m
    (ArcFace's switch to the linear continuation), and a zero feature."""
    head = Head(2, 3, kind, scale=30.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    at_switch = [math.cos(math.pi - 0.5), math.sin(math.pi - 0.5)]
    features = torch.tensor([[2.0, 0.0], [-2.0, 0.0], at_switch, [0.0, 0.0]], dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1])
    loss = torch.nn.functional.cross_entropy(head(features, labels), labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all() and torch.isfinite(head.weight.grad).all()


def test_arcface_target_logit_never_rises_as_the_angle_grows():
    """The continuation past theta + m = pi keeps the target logit decreasing in theta."""
    head = Head(2, 2, "arcface", scale=1.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    angles = torch.linspace(0, math.pi, 721)
    features = torch.stack([angles.cos(), angles.sin()], dim=1)
    target = head(features, torch.zeros(721, dtype=torch.long))[:, 0]
    assert (target[1:] <= target[:-1] + 1e-6).all()


def test_linear_head_is_the_papers_softmax_layer():
    model = LeNetsPP(classifier_bias=True)
    features = torch.randn(4, 2)
    expected = features @ model.classifier.weight.T + model.classifier.bias
    assert torch.allclose(model.classifier(features), expected, atol=1e-6)
    labels = torch.tensor([0, 1, 2, 3])
    log_probs = torch.log_softmax(expected, 1)
    assert model.margin_log_probs(features, log_probs, labels) is log_probs


# ---------- the fused PReLU kernel against PReLU's formula ----------



@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [7, 100])
def test_fused_prelu_matches_the_formula_and_its_gradients(channels_last, batch, compiler):
    torch.manual_seed(0)
    x = torch.randn(batch, 16, 9, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    fused = PReLU(16)
    fused.weight.data.uniform_(-0.5, 0.5)
    fused.train_kernel = compiled_prelu()
    xf = x.clone().requires_grad_()
    y = fused(xf)
    y.backward(g)
    # By hand: y = x for x > 0, w x otherwise; dy/dx = 1 or w; dy/dw_c = sum of x over x <= 0 in channel c.
    w = fused.weight.detach().view(1, -1, 1, 1)
    negative = x <= 0
    assert torch.allclose(y, torch.where(negative, w * x, x), atol=1e-6)
    assert torch.allclose(xf.grad, torch.where(negative, w * g, g), atol=1e-6)
    assert torch.allclose(fused.weight.grad, (torch.where(negative, x, 0) * g).sum((0, 2, 3)), rtol=1e-4, atol=1e-4)


def test_network_with_the_fused_kernel_has_the_same_gradients(compiler):
    torch.manual_seed(0)
    plain = LeNetsPP()
    fused = LeNetsPP()
    fused.load_state_dict(plain.state_dict())
    fused.use_prelu_kernel(compiled_prelu())
    images, labels = torch.randn(12, 1, 28, 28), torch.randint(0, 10, (12,))
    for model in (plain, fused):
        features, log_probs = model(images)
        (torch.nn.functional.nll_loss(log_probs, labels) + features.pow(2).mean()).backward()
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name
    assert [type(m) for m in fused.modules()] == [type(m) for m in plain.modules()]
    assert set(fused.state_dict()) == set(plain.state_dict())  # checkpoints load either way
    with torch.no_grad():  # evaluation uses eager PReLU whatever the training kernel is
        assert torch.equal(fused(images)[0], plain(images)[0])
