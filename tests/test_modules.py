"""nn.Module front ends: parameters, state_dict, alpha learnable or frozen, res_scale, wrapping."""
import copy
import pickle

import pytest
import torch
from torch import nn

import gradres_fused as gf

BACKENDS = gf.available_backends("cpu")


def test_mlp_module_matches_functional_and_has_stable_keys():
    m = gf.GradResMLP(5, 7, activation="silu", alpha_init=0.3, detach=False,
                      dtype=torch.float64)
    assert set(m.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "alpha"}
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    want = gf.gradres_mlp(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.alpha,
                          activation="silu", detach=False, backend="reference")
    torch.testing.assert_close(m(x), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_keys_do_not_depend_on_backend(backend):
    ref = gf.GradResConv2d(3, 4, backend="reference")
    other = gf.GradResConv2d(3, 4, backend=backend)
    assert list(ref.state_dict()) == list(other.state_dict())
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(other(x), ref(x), rtol=1e-5, atol=1e-6)


def test_alpha_learnable_gets_gradient_and_trains():
    m = gf.GradResMLP(4, 6, alpha_init=-1.0)
    assert isinstance(m.alpha, nn.Parameter) and "alpha" in dict(m.named_parameters())
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    before = m.alpha.item()
    m(torch.randn(8, 4)).square().sum().backward()
    assert m.alpha.grad is not None and float(m.alpha.grad) != 0.0
    opt.step()
    assert m.alpha.item() != before


def test_alpha_frozen_is_a_buffer():
    m = gf.GradResMLP(4, 6, alpha_init=2.0, learn_alpha=False)
    assert "alpha" not in dict(m.named_parameters()) and "alpha" in dict(m.named_buffers())
    assert "alpha" in m.state_dict()
    m(torch.randn(3, 4)).sum().backward()
    assert float(m.alpha) == 2.0 and m.fc1.weight.grad is not None
    torch.testing.assert_close(m.mix, torch.sigmoid(torch.tensor(2.0)))


def test_res_scale_is_folded_into_conv2():
    torch.manual_seed(0)
    m = gf.GradResConv2d(3, 5, kernel_size=5, activation="gelu", res_scale=0.1,
                         dtype=torch.float64)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    want = gf.gradres_conv2d(x, m.conv1.weight, m.conv1.bias, 0.1 * m.conv2.weight,
                             0.1 * m.conv2.bias, m.alpha, activation="gelu",
                             backend="reference")
    torch.testing.assert_close(m(x), want, rtol=0, atol=1e-12)
    assert m.conv1.weight.shape == (5, 3, 5, 5) and m.conv2.weight.shape == (3, 5, 5, 5)


def test_conv_hidden_channels_default_to_channels():
    m = gf.GradResConv2d(6)
    assert m.conv1.out_channels == 6 and m.conv2.in_channels == 6


def test_gradient_residual_wraps_any_block_like_the_fused_op():
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)).double()
    for detach in (True, False):
        wrapped = gf.GradientResidual(block, alpha_init=0.4, detach=detach).double()
        x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
        want = gf.gradres_conv2d(x, block[0].weight, block[0].bias, block[2].weight,
                                 block[2].bias, wrapped.alpha, activation="tanh",
                                 detach=detach, backend="composite")
        torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-12)


def test_gradient_residual_under_no_grad_returns_plain_tensor():
    wrapped = gf.GradientResidual(nn.Linear(4, 4), detach=False)
    with torch.no_grad():
        y = wrapped(torch.randn(3, 4))
    assert not y.requires_grad and y.grad_fn is None


def test_gradient_residual_rejects_shape_changing_module():
    with pytest.raises(ValueError, match="module"):
        gf.GradientResidual(nn.Linear(4, 3))(torch.randn(2, 4))


@pytest.mark.parametrize("make", [lambda: gf.GradResMLP(4, 5),
                                  lambda: gf.GradResConv2d(2, 3, res_scale=0.5),
                                  lambda: gf.GradientResidual(nn.Linear(4, 4))])
def test_modules_pickle_and_deepcopy(make):
    m = make()
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone.state_dict().keys() == m.state_dict().keys()
        for k, v in m.state_dict().items():
            torch.testing.assert_close(clone.state_dict()[k], v)
    assert "alpha" in repr(m)


def test_module_rejects_even_kernel_and_unknown_activation():
    with pytest.raises(ValueError, match="kernel_size"):
        gf.GradResConv2d(3, kernel_size=4)
    with pytest.raises(ValueError, match="activation"):
        gf.GradResMLP(3, 4, activation="mish")
    with pytest.raises(ValueError, match="eps"):
        gf.GradResMLP(3, 4, eps=-1.0)
