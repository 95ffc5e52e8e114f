import pytest
import torch
import torch.nn.functional as F

from fftrain.model.grl import DatasetClassifier, grad_reverse


def test_grad_reverse_is_identity_forward_and_negates_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.1)
    assert torch.equal(y, x)
    w = torch.randn(4, 3)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.1 * w)


@pytest.mark.parametrize("hidden", [0, 16])
def test_classifier_learns_normally_and_reverses_into_the_embedding(hidden):
    torch.manual_seed(0)
    head = DatasetClassifier(8, 3, hidden=hidden, lam=0.1)
    x = torch.randn(5, 8, requires_grad=True)
    ids = torch.tensor([0, 1, 2, 2, 0])
    head.loss(x, ids).backward()
    reversed_grads = [p.grad.clone() for p in head.parameters()]
    x_grad = x.grad.clone()
    head.zero_grad()
    x.grad = None
    F.cross_entropy(head.net(x), ids).backward()
    for got, plain in zip(reversed_grads, [p.grad for p in head.parameters()]):
        torch.testing.assert_close(got, plain)
    torch.testing.assert_close(x_grad, -0.1 * x.grad)


def test_errors():
    head = DatasetClassifier(8, 3)
    with pytest.raises(ValueError, match=r"dataset id 3 out of range \[0, 3\)"):
        head.loss(torch.randn(2, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_datasets must be >= 1, got 0"):
        DatasetClassifier(8, 0)
