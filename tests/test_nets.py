import pytest
import torch

from nets import LeNetsPP


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
