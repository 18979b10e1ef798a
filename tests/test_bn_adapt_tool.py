"""tools/bn_adapt_score.py's BatchNorm adaptation: the two ends of its prior, and nothing left changed."""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from bn_adapt_score import adapted_batchnorm  # noqa: E402


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return net.eval()


def test_prior_zero_is_batch_statistics_and_huge_prior_is_training_statistics():
    net = _net()
    x = torch.randn(6, 3, 12, 12) * 3 + 1
    before = [b.clone() for b in net.buffers()]
    with torch.no_grad():
        plain = net(x)
        with adapted_batchnorm(net, 1e12):
            same = net(x)
        with adapted_batchnorm(net, 0.0):
            own = net(x)
        for a, b in zip(before, net.buffers(), strict=True):  # the running statistics are left as they were
            torch.testing.assert_close(a, b)
        assert not any(h for m in net.modules() for h in (m._forward_pre_hooks, m._forward_hooks))
        net.train()
        batch_stats = net(x)  # train mode normalises by the batch's own statistics (biased variance)
    torch.testing.assert_close(same, plain)
    torch.testing.assert_close(own, batch_stats, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(own, plain)
