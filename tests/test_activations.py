"""The activation table: φ against torch's own function, each derivative against autograd."""
import pytest
import torch
import torch.nn.functional as F

import gradres_fused as gf
from conftest import ACTIVATIONS

TORCH_FN = {
    "relu": torch.relu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu, "tanh": torch.tanh, "sin": torch.sin,
}


def _points():
    z = torch.cat([torch.linspace(-6, 6, 1001, dtype=torch.float64),
                   torch.randn(1000, dtype=torch.float64) * 3])
    return z[z.abs() > 1e-6]  # keep off relu's kink, where no derivative exists


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_phi_matches_torch(name):
    z = _points()
    torch.testing.assert_close(gf.get_activation(name).fn(z), TORCH_FN[name](z),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_derivative_matches_autograd(name, order):
    act = gf.get_activation(name)
    z = _points().requires_grad_()
    lower = act.derivative(z, order - 1)
    auto = None
    if lower.requires_grad:  # relu's step and zeros are constants: their derivative is 0
        (auto,) = torch.autograd.grad(lower.sum(), z, allow_unused=True)
    auto = torch.zeros_like(z) if auto is None else auto
    torch.testing.assert_close(act.derivative(z, order), auto, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_d2_is_zero_flag_is_true_only_when_d2_vanishes(name):
    act = gf.get_activation(name)
    assert act.d2_is_zero == bool((act.d2(_points()) == 0).all())


def test_unknown_activation_names_known_ones():
    with pytest.raises(ValueError, match="activation.*relu"):
        gf.get_activation("swish")
