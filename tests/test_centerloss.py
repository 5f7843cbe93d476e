"""Center loss and both center-update rules against independent references."""

import pytest
import torch

from centerloss import CenterLoss, scale_feature_grad


def naive_loss(features, labels, centers):
    """The paper's Eq. 2 written as a loop, divided by the batch size."""
    total = 0.0
    for x, y in zip(features, labels):
        total = total + 0.5 * sum((x[d] - centers[y][d]) ** 2 for d in range(len(x)))
    return total / len(labels)


def test_loss_matches_hand_written_loop():
    torch.manual_seed(0)
    loss = CenterLoss(10, 3)
    features, labels = torch.randn(17, 3), torch.randint(0, 10, (17,))
    expected = naive_loss(features.tolist(), labels.tolist(), loss.centers.tolist())
    assert loss(features, labels).item() == pytest.approx(expected, rel=1e-6)


def naive_class_loss(features, labels, centers):
    """The seed blog's normalisation as a loop: each term over its class's count in the batch."""
    counts = {y: labels.count(y) for y in labels}
    total = 0.0
    for x, y in zip(features, labels):
        total = total + 0.5 * sum((x[d] - centers[y][d]) ** 2 for d in range(len(x))) / counts[y]
    return total / len(labels)


def test_class_normalised_loss_matches_hand_written_loop():
    torch.manual_seed(0)
    loss = CenterLoss(10, 3, normalize="class")
    features, labels = torch.randn(23, 3), torch.tensor([0, 0, 0, 1, 2, 2, 5, 5, 5, 5, 5, 9] + [3] * 11)
    expected = naive_class_loss(features.tolist(), labels.tolist(), loss.centers.tolist())
    assert loss(features, labels).item() == pytest.approx(expected, rel=1e-6)
    batch = CenterLoss(10, 3)
    batch.load_state_dict(loss.state_dict())
    assert loss(features, labels).item() != pytest.approx(batch(features, labels).item(), rel=1e-3)


@pytest.mark.parametrize("normalize", ["batch", "class"])
def test_loss_gradcheck_float64(normalize):
    """Autograd's gradients of the module, wrt features and centers, against finite differences."""
    torch.manual_seed(1)
    loss = CenterLoss(4, 2, normalize=normalize).double()
    features = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    centers = loss.centers.detach().clone().requires_grad_()
    labels = torch.tensor([0, 1, 1, 3, 3, 3, 0, 2, 1])
    assert torch.autograd.gradcheck(
        lambda f, c: torch.func.functional_call(loss, {"centers": c}, (f, labels)), (features, centers))


def test_gradients_match_the_formula():
    """d/dx_i = (x_i - c_yi)/B and d/dc_j = -(1/B) sum_{y_i=j} (x_i - c_j)."""
    torch.manual_seed(2)
    loss = CenterLoss(3, 2).double()
    features = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    loss(features, labels).backward()
    c = loss.centers.detach()
    assert torch.allclose(features.grad, (features.detach() - c[labels]) / 6)
    for j in range(3):
        mine = features.detach()[labels == j]
        assert torch.allclose(loss.centers.grad[j], -(mine - c[j]).sum(0) / 6)


def test_paper_update_matches_per_sample_loop():
    torch.manual_seed(3)
    loss = CenterLoss(5, 2, update="paper", alpha=0.3)
    features, labels = torch.randn(23, 2), torch.tensor([0, 1, 1, 3] * 5 + [0, 0, 1])  # class 2 and 4 absent
    before = loss.centers.detach().clone()
    expected = before.clone()
    for j in range(5):
        delta, count = torch.zeros(2), 0
        for x, y in zip(features, labels):
            if int(y) == j:
                delta += before[j] - x
                count += 1
        expected[j] = before[j] - 0.3 * delta / (1 + count)
    loss.update_centers(features, labels)
    assert torch.allclose(loss.centers.detach(), expected, atol=1e-6)
    assert torch.equal(loss.centers.detach()[[2, 4]], before[[2, 4]])  # absent classes do not move
    assert not loss.centers.requires_grad


def sgd_step(weight, seed=4):
    """One step of features -> NLL-free center loss; returns feature grad and new centers."""
    torch.manual_seed(seed)
    loss = CenterLoss(10, 2)
    features = torch.randn(32, 2, requires_grad=True)
    labels = torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.5)
    loss(scale_feature_grad(features, weight), labels).backward()
    optimizer.step()
    return features.grad.clone(), loss.centers.detach().clone(), loss(features, labels).item()


def test_sgd_centers_move_independently_of_lambda():
    grad_1, centers_1, _ = sgd_step(1.0)
    grad_small, centers_small, _ = sgd_step(0.01)
    grad_zero, centers_zero, _ = sgd_step(0.0)
    assert torch.allclose(centers_small, centers_1) and torch.allclose(centers_zero, centers_1)
    assert torch.allclose(grad_small, 0.01 * grad_1)
    assert torch.count_nonzero(grad_zero) == 0
    torch.manual_seed(4)
    start = CenterLoss(10, 2).centers.detach()
    assert not torch.allclose(centers_zero, start)  # lambda = 0: centers still track the features


def test_scale_feature_grad_keeps_the_value():
    x = torch.randn(4, 2, requires_grad=True)
    assert torch.equal(scale_feature_grad(x, 0.0), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_features_computed_in_fp32(dtype):
    torch.manual_seed(5)
    loss = CenterLoss(10, 2)
    features, labels = torch.randn(8, 2), torch.randint(0, 10, (8,))
    low = loss(features.to(dtype), labels)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss(features.to(dtype).float(), labels).item(), rel=1e-6)
    paper = CenterLoss(10, 2, update="paper")
    paper.update_centers(features.to(dtype), labels)
    assert paper.centers.dtype == torch.float32


@pytest.mark.parametrize("features, labels, message", [
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.long), "feat_dim=2"),
    (torch.randn(4), torch.zeros(4, dtype=torch.long), "shape"),
    (torch.randn(0, 2), torch.zeros(0, dtype=torch.long), "empty batch"),
    (torch.randn(4, 2), torch.tensor([0, 1, 2, 10]), r"\[0, 10\)"),
    (torch.randn(4, 2), torch.tensor([0, -1, 2, 3]), r"\[0, 10\)"),
    (torch.randn(4, 2), torch.zeros(4), "integer"),
    (torch.randn(4, 2), torch.zeros(3, dtype=torch.long), "match"),
])
def test_bad_input_is_a_value_error(features, labels, message):
    with pytest.raises(ValueError, match=message):
        CenterLoss(10, 2)(features, labels)


def test_bad_construction():
    with pytest.raises(ValueError, match="update"):
        CenterLoss(10, 2, update="momentum")
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(10, 2, update="paper", alpha=1.5)
    with pytest.raises(ValueError, match="normalize"):
        CenterLoss(10, 2, normalize="sum")


def test_lambda_as_a_tensor_scales_like_a_float():
    features = torch.randn(5, 2, requires_grad=True)
    grads = []
    for weight in (0.3, torch.tensor(0.3)):
        features.grad = None
        scale_feature_grad(features, weight).pow(2).sum().backward()
        grads.append(features.grad.clone())
    assert torch.allclose(grads[0], grads[1]) and torch.allclose(grads[0], 0.3 * 2 * features.detach())
