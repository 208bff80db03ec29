"""Every CPU backend against `reference` (docs/DESIGN.md §6): y, first-order gradients and the gradients of
a gradient penalty (double backward), for every activation × mode × normalize, on awkward shapes."""
import functools

import pytest
import torch

import gradres_fused as gf
from conftest import (ACTIVATIONS, assert_parity, compare_with_reference as _compare,
                      conv_inputs, leaves, mlp_inputs, outputs_and_grads)

BACKENDS = [b for b in gf.available_backends("cpu") if b != "reference"]

# (N, D, H) — batch 1, D of 1, H of 1, sizes that are multiples of nothing; "3d" adds a leading dim.
MLP_SHAPES = [(7, 5, 3), (1, 4, 6), (5, 1, 3), (6, 4, 1), "3d"]
# (N, C, Cm, H, W, k1, k2) — kernel sizes 1, 3, 5; odd H, W; batch 1; C or Cm of 1.
CONV_SHAPES = [(2, 3, 4, 5, 7, 3, 3), (1, 2, 3, 5, 3, 1, 5), (2, 1, 2, 7, 5, 5, 3),
               (1, 3, 1, 3, 5, 3, 1)]
MODES = [pytest.param(True, id="detach"), pytest.param(False, id="second_order")]
NORMALIZE = [pytest.param(True, id="norm"), pytest.param(False, id="raw")]


def _mlp_case(shape, dtype, bias=True):
    if shape == "3d":
        x, *rest = mlp_inputs(6, 5, 7, dtype, bias)
        return (x.detach().reshape(2, 3, 5).requires_grad_(), *rest)
    return mlp_inputs(*shape, dtype=dtype, bias=bias)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", MLP_SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_mlp_parity(backend, shape, activation, detach, normalize, dtype):
    _compare(gf.gradres_mlp, backend, _mlp_case(shape, dtype), dtype,
             activation=activation, detach=detach, normalize=normalize)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_parity(backend, shape, activation, detach, normalize, dtype):
    _compare(gf.gradres_conv2d, backend, conv_inputs(*shape, dtype=dtype), dtype,
             activation=activation, detach=detach, normalize=normalize)


@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias(backend, detach):
    _compare(gf.gradres_mlp, backend, mlp_inputs(5, 4, 3, bias=False), torch.float64,
             activation="silu", detach=detach, normalize=True)
    _compare(gf.gradres_conv2d, backend, conv_inputs(2, 2, 3, 5, 3, bias=False),
             torch.float64, activation="tanh", detach=detach, normalize=True)


@pytest.mark.parametrize("eps", [0.5, 1e-3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_and_alpha_extremes(backend, eps):
    x, w1, b1, w2, b2, _ = mlp_inputs(6, 4, 5)
    for alpha in (torch.tensor(-8.0, dtype=torch.float64, requires_grad=True),
                  torch.tensor([6.0], dtype=torch.float64, requires_grad=True)):
        _compare(gf.gradres_mlp, backend, (x, w1, b1, w2, b2, alpha), torch.float64,
                 activation="gelu", detach=False, normalize=True, eps=eps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_accumulates_in_float32(backend, dtype):
    """Half inputs give half outputs within 3e-3 of the float32 reference on the same values."""
    inputs = leaves(mlp_inputs(9, 6, 10), dtype=dtype)
    proj = torch.randn(inputs[0].shape)
    fn = functools.partial(gf.gradres_mlp, detach=False, activation="silu")
    got, _ = outputs_and_grads(functools.partial(fn, backend=backend), inputs, proj.to(dtype))
    want, _ = outputs_and_grads(functools.partial(fn, backend="reference"),
                                leaves(inputs, dtype=torch.float32), proj)
    baseline, _ = outputs_and_grads(functools.partial(fn, backend="reference"), inputs,
                                    proj.to(dtype))
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1:])
    assert_parity(got, want, dtype, baseline)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    for detach in (True, False):
        x, w1, b1, w2, b2, alpha = mlp_inputs(0, 4, 3)
        y = gf.gradres_mlp(x, w1, b1, w2, b2, alpha, backend=backend, detach=detach)
        assert y.shape == (0, 4)
        y.sum().backward()
        assert float(w1.grad.abs().sum()) == 0.0 and float(alpha.grad) == 0.0
        x, w1, b1, w2, b2, alpha = conv_inputs(0, 2, 3, 5, 5)
        y = gf.gradres_conv2d(x, w1, b1, w2, b2, alpha, backend=backend, detach=detach)
        assert y.shape == (0, 2, 5, 5)
        y.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_gradient_is_finite(backend):
    """W2 = 0 makes g = 0: the smooth norm keeps outputs and all gradients finite."""
    x, w1, b1, w2, b2, alpha = mlp_inputs(4, 3, 5)
    w2 = torch.zeros_like(w2, requires_grad=True)
    y = gf.gradres_mlp(x, w1, b1, w2, b2, alpha, backend=backend, detach=False)
    grads = torch.autograd.grad(y.sum(), [x, w1, b1, w2, b2, alpha])
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
