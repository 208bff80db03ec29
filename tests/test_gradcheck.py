"""gradcheck / gradgradcheck in float64 (second-order mode: y really is the function its backward
differentiates; in detach mode ĝ is a stop-gradient, so detach mode is checked by parity against
`reference`, double backward included, in test_parity.py)."""
import functools

import pytest
from torch.autograd import gradcheck, gradgradcheck

import gradres_fused as gf
from conftest import ACTIVATIONS, conv_inputs, mlp_inputs

BACKENDS = [b for b in gf.available_backends("cpu") if b != "reference"]
# Triton's interpreter takes 25-45 s per float64 gradcheck + gradgradcheck on 2 cores: one case
# per family stays in the default run, the rest are the `long` set CI runs on its own
# (python -m pytest -m long).
TRITON_DEFAULT = ("silu", True)


def cases():
    """(backend, activation, normalize) with the Triton cases past TRITON_DEFAULT marked long."""
    return [pytest.param(b, a, n, id=f"{b}-{a}-{'norm' if n else 'raw'}",
                         marks=[pytest.mark.long] if b == "triton" and (a, n) != TRITON_DEFAULT
                         else [])
            for b in BACKENDS for a in ACTIVATIONS for n in (True, False)]


def _check(fn, inputs):
    inputs = tuple(inputs)
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend, activation, normalize", cases())
def test_mlp_gradcheck(backend, activation, normalize):
    fn = functools.partial(gf.gradres_mlp, activation=activation, normalize=normalize,
                           detach=False, backend=backend)
    _check(fn, mlp_inputs(3, 4, 5))


@pytest.mark.parametrize("backend, activation, normalize", cases())
def test_conv_gradcheck(backend, activation, normalize):
    fn = functools.partial(gf.gradres_conv2d, activation=activation, normalize=normalize,
                           detach=False, backend=backend)
    _check(fn, conv_inputs(2, 2, 3, 4, 3, k1=3, k2=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_detach_mode_gradcheck_where_g_hat_is_constant(backend):
    """ĝ does not depend on b2 or alpha, so in detach mode those derivatives are exact ones."""
    x, w1, b1, w2, b2, alpha = mlp_inputs(4, 3, 5)
    x, w1, b1, w2 = (t.detach() for t in (x, w1, b1, w2))
    fn = lambda b2_, alpha_: gf.gradres_mlp(x, w1, b1, w2, b2_, alpha_, activation="tanh",
                                            detach=True, backend=backend)
    _check(fn, (b2, alpha))
