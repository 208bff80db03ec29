"""Bad input raises ValueError/TypeError naming the argument (docs/DESIGN.md §4), and backend selection."""
import pytest
import torch

import gradres_fused as gf
from gradres_fused.backends import ENV_VAR, get_backend
from conftest import conv_inputs, mlp_inputs


def _mlp(**over):
    x, w1, b1, w2, b2, alpha = (None if t is None else t.detach()
                                for t in mlp_inputs(4, 3, 5, torch.float32))
    args = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, alpha=alpha)
    opts = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return gf.gradres_mlp(*args.values(), **opts)


def _conv(**over):
    x, w1, b1, w2, b2, alpha = (None if t is None else t.detach()
                                for t in conv_inputs(2, 3, 4, 5, 5, dtype=torch.float32))
    args = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, alpha=alpha)
    opts = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    return gf.gradres_conv2d(*args.values(), **opts)


MLP_BAD = [
    (dict(x=torch.randn(4, 2)), ValueError, "w1"),
    (dict(x=torch.tensor(1.0)), ValueError, "x"),
    (dict(x=torch.ones(4, 3, dtype=torch.int64)), TypeError, "x"),
    (dict(x=[[1.0, 2.0, 3.0]]), TypeError, "x"),
    (dict(w1=torch.randn(5, 3, 1)), ValueError, "w1"),
    (dict(w2=torch.randn(5, 3)), ValueError, "w2"),
    (dict(b1=torch.randn(4)), ValueError, "b1"),
    (dict(b2=torch.randn(5)), ValueError, "b2"),
    (dict(w2=torch.randn(3, 5, dtype=torch.float64)), TypeError, "w2"),
    (dict(b1=torch.randn(5, dtype=torch.float16)), TypeError, "b1"),
    (dict(alpha=torch.zeros(2)), ValueError, "alpha"),
    (dict(alpha=torch.zeros((), dtype=torch.int32)), TypeError, "alpha"),
    (dict(alpha=True), TypeError, "alpha"),
    (dict(w1=torch.randn(5, 3, device="meta")), ValueError, "w1"),
    (dict(x=torch.randn(4, 3, device="meta")), ValueError, "x"),
    (dict(activation="swish"), ValueError, "activation"),
    (dict(eps=-1e-6), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps="1e-6"), TypeError, "eps"),
    (dict(normalize=1), TypeError, "normalize"),
    (dict(detach=None), TypeError, "detach"),
    (dict(backend="cuda-magic"), ValueError, "backend"),
    (dict(backend=3), TypeError, "backend"),
]


BACKENDS = gf.available_backends("cpu")


def _with_backend(over, backend):
    """Validation runs before dispatch, so every backend must refuse the same input the same way;
    a case about the backend argument itself keeps its own."""
    return over if "backend" in over else dict(over, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("over,exc,name", MLP_BAD, ids=[m[2] + str(i) for i, m in
                                                         enumerate(MLP_BAD)])
def test_mlp_bad_input(over, exc, name, backend):
    with pytest.raises(exc, match=name):
        _mlp(**_with_backend(over, backend))


CONV_BAD = [
    (dict(x=torch.randn(3, 5, 5)), ValueError, "x"),
    (dict(x=torch.randn(2, 4, 5, 5)), ValueError, "w1"),
    (dict(w1=torch.randn(4, 3, 2, 2)), ValueError, "w1"),
    (dict(w2=torch.randn(3, 4, 3, 4)), ValueError, "w2"),
    (dict(w2=torch.randn(3, 5, 3, 3)), ValueError, "w2"),
    (dict(b2=torch.randn(4)), ValueError, "b2"),
    (dict(x=torch.ones(2, 3, 5, 5, dtype=torch.int32)), TypeError, "x"),
    (dict(b1=torch.randn(4, dtype=torch.float64)), TypeError, "b1"),
    (dict(activation=None), ValueError, "activation"),
    (dict(x=torch.randn(2, 3, 5, 5, device="meta")), ValueError, "x"),
    (dict(w2=torch.randn(3, 4, 3, 3, device="meta")), ValueError, "w2"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(backend="tpu"), ValueError, "backend"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("over,exc,name", CONV_BAD, ids=[m[2] + str(i) for i, m in
                                                           enumerate(CONV_BAD)])
def test_conv_bad_input(over, exc, name, backend):
    with pytest.raises(exc, match=name):
        _conv(**_with_backend(over, backend))


def test_python_float_alpha_is_accepted():
    x, w1, b1, w2, b2, _ = (t.detach() for t in mlp_inputs(4, 3, 5, torch.float32))
    torch.testing.assert_close(gf.gradres_mlp(x, w1, b1, w2, b2, 0.25),
                               gf.gradres_mlp(x, w1, b1, w2, b2, torch.tensor(0.25)))


def test_available_backends_lists_reference_and_composite():
    names = gf.available_backends("cpu")
    assert {"reference", "composite"} <= set(names)
    assert gf.available_backends() == gf.available_backends(None)


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(ValueError, match="composite"):
        _mlp(backend="nope")


def test_auto_never_picks_reference(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert get_backend("auto", torch.device("cpu"), torch.float32).name != "reference"


def test_env_variable_overrides_auto_but_not_explicit_names(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert get_backend("auto", torch.device("cpu"), torch.float32).name == "reference"
    assert get_backend("composite", torch.device("cpu"), torch.float32).name == "composite"
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ENV_VAR):
        _mlp()


@pytest.mark.parametrize("module, x, message", [
    (lambda: gf.GradResMLP(64, 64), torch.randn(3, 32),
     r"GradResMLP\(dim=64\) got an input of width 32 .*expected x of shape \(\.\.\., 64\)"),
    (lambda: gf.GradResMLP(8, 4), torch.tensor(1.0), r"GradResMLP\(dim=8\) got a 0-d tensor"),
    (lambda: gf.GradResConv2d(16), torch.randn(2, 8, 5, 5),
     r"GradResConv2d\(channels=16\) got an input with 8 channels .*\(N, 16, H, W\)"),
    (lambda: gf.GradResConv2d(16), torch.randn(16, 5, 5),
     r"GradResConv2d\(channels=16\) expects x of shape \(N, 16, H, W\), got a 3-d tensor"),
], ids=["mlp-width", "mlp-0d", "conv-channels", "conv-rank"])
def test_module_input_errors_name_the_modules_own_arguments(module, x, message):
    """A module speaks of its constructor's arguments (dim, channels), not of the weights w1/w2
    that the functional API sees."""
    with pytest.raises(ValueError, match=message) as err:
        module()(x)
    assert "w1" not in str(err.value)
