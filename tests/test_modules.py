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
    torch.testing.assert_close(m.mix, torch.sigmoid(torch.tensor([2.0])))


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


MODULES = [lambda **kw: gf.GradResMLP(4, 5, **kw),
           lambda **kw: gf.GradResConv2d(2, 3, res_scale=0.5, **kw),
           lambda **kw: gf.GradientResidual(nn.Linear(4, 4), **kw)]


@pytest.mark.parametrize("learn_alpha", [True, False])
@pytest.mark.parametrize("make", MODULES)
def test_alpha_has_shape_one(make, learn_alpha):
    """FSDP2's fully_shard refuses 0-d parameters, so alpha is (1,) whether parameter or buffer."""
    m = make(alpha_init=0.7, learn_alpha=learn_alpha)
    assert m.alpha.shape == (1,) and m.state_dict()["alpha"].shape == (1,)
    assert isinstance(m.alpha, nn.Parameter) == learn_alpha
    assert m.alpha.item() == pytest.approx(0.7)


@pytest.mark.parametrize("learn_alpha", [True, False])
@pytest.mark.parametrize("make", MODULES)
def test_state_dict_with_old_scalar_alpha_loads(make, learn_alpha):
    """A checkpoint saved when alpha was 0-d, nested inside a bigger model (prefixed keys)."""
    source = make(alpha_init=-0.3, learn_alpha=learn_alpha)
    old = {k: (v.reshape(()) if k == "alpha" else v.clone()) for k, v in
           source.state_dict().items()}
    assert old["alpha"].dim() == 0
    target = nn.Sequential(make(alpha_init=0.9, learn_alpha=learn_alpha))
    target.load_state_dict({f"0.{k}": v for k, v in old.items()})
    assert target[0].alpha.shape == (1,) and isinstance(target[0].alpha, nn.Parameter) == learn_alpha
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target[0].state_dict()[k], v, rtol=0, atol=0)
    # strict loading of the module itself, and of a current (1,) state_dict
    fresh = make()
    fresh.load_state_dict(old, strict=True)
    fresh.load_state_dict(source.state_dict(), strict=True)
    torch.testing.assert_close(fresh.alpha, source.alpha, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["mlp", "conv2d"])
def test_alpha_gradient_has_alpha_shape_on_every_backend(backend, family):
    """The functional API takes a float, a 0-d or any one-element tensor; ᾱ comes back in
    alpha's shape and the same value whatever that shape."""
    if family == "mlp":
        op = gf.gradres_mlp
        x, w1, b1, w2, b2 = (torch.randn(5, 3), torch.randn(4, 3) / 2, torch.randn(4),
                             torch.randn(3, 4) / 2, torch.randn(3))
    else:
        op = gf.gradres_conv2d
        x, w1, b1, w2, b2 = (torch.randn(2, 3, 4, 4), torch.randn(4, 3, 3, 3) / 5, torch.randn(4),
                             torch.randn(3, 4, 3, 3) / 5, torch.randn(3))
    y_float = op(x, w1, b1, w2, b2, 0.25, backend=backend)
    grads = []
    for shape in [(), (1,), (1, 1), (1, 1, 1, 1, 1)]:
        alpha = torch.full(shape, 0.25, requires_grad=True)
        y = op(x, w1, b1, w2, b2, alpha, backend=backend)
        assert y.shape == x.shape
        torch.testing.assert_close(y, y_float, rtol=1e-6, atol=1e-6)
        (g,) = torch.autograd.grad(y.square().sum(), alpha)
        assert g.shape == alpha.shape, (shape, g.shape)
        grads.append(g.reshape(()))
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-6)


BAD_CONSTRUCTION = [
    (lambda: gf.GradResMLP(0, 32), ValueError, "dim"),
    (lambda: gf.GradResMLP(4, -1), ValueError, "hidden"),
    (lambda: gf.GradResMLP("64", 32), TypeError, "dim"),
    (lambda: gf.GradResMLP(4, 3.0), TypeError, "hidden"),
    (lambda: gf.GradResMLP(True, 3), TypeError, "dim"),
    (lambda: gf.GradResMLP(3, 4, backend="nope"), ValueError, "backend"),
    (lambda: gf.GradResMLP(3, 4, backend=None), TypeError, "backend"),
    (lambda: gf.GradResMLP(3, 4, activation="mish"), ValueError, "activation"),
    (lambda: gf.GradResMLP(3, 4, eps=-1.0), ValueError, "eps"),
    (lambda: gf.GradResMLP(3, 4, detach="yes"), TypeError, "detach"),
    (lambda: gf.GradResMLP(3, 4, normalize=None), TypeError, "normalize"),
    (lambda: gf.GradResMLP(3, 4, alpha_init=float("nan")), ValueError, "alpha_init"),
    (lambda: gf.GradResMLP(3, 4, alpha_init="0"), TypeError, "alpha_init"),
    (lambda: gf.GradResMLP(3, 4, learn_alpha=1), TypeError, "learn_alpha"),
    (lambda: gf.GradResMLP(3, 4, bias=0), TypeError, "bias"),
    (lambda: gf.GradResConv2d(0), ValueError, "channels"),
    (lambda: gf.GradResConv2d(3, 0), ValueError, "hidden_channels"),
    (lambda: gf.GradResConv2d(3, "8"), TypeError, "hidden_channels"),
    (lambda: gf.GradResConv2d(3, kernel_size=4), ValueError, "kernel_size"),
    (lambda: gf.GradResConv2d(3, kernel_size=0), ValueError, "kernel_size"),
    (lambda: gf.GradResConv2d(3, kernel_size=(3, 3)), TypeError, "kernel_size"),
    (lambda: gf.GradResConv2d(3, res_scale="0.1"), TypeError, "res_scale"),
    (lambda: gf.GradResConv2d(3, res_scale=float("inf")), ValueError, "res_scale"),
    (lambda: gf.GradResConv2d(3, backend="cuda"), ValueError, "backend"),
    (lambda: gf.GradResConv2d(3, activation="mish"), ValueError, "activation"),
    (lambda: gf.GradientResidual(nn.Linear(3, 3), eps=float("nan")), ValueError, "eps"),
    (lambda: gf.GradientResidual(nn.Linear(3, 3), alpha_init=None), TypeError, "alpha_init"),
    (lambda: gf.GradientResidual("linear"), TypeError, "module"),
]


@pytest.mark.parametrize("make,exc,name", BAD_CONSTRUCTION,
                         ids=[c[2] + str(i) for i, c in enumerate(BAD_CONSTRUCTION)])
def test_module_construction_validates_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


def test_module_accepts_every_known_backend_name_at_construction():
    """Whether a backend can run depends on the input's device (a module built on CPU may move to
    CUDA), so a known but unavailable name is accepted here and refused at the call."""
    for name in ("auto", "reference", "composite", "cpp", "triton"):
        assert gf.GradResMLP(3, 4, backend=name).backend == name


@pytest.mark.parametrize("make,attr,x", [
    (lambda: gf.GradResMLP(4, 5), "fc1.weight", torch.randn(3, 4)),
    (lambda: gf.GradResConv2d(2, 3), "conv1.weight", torch.randn(2, 2, 5, 5)),
])
def test_module_dtype_mismatch_names_the_module_and_the_fix(make, attr, x):
    m = make()
    with pytest.raises(TypeError) as info:
        m(x.to(torch.bfloat16))
    msg = str(info.value)
    for part in (type(m).__name__, attr, "torch.bfloat16", "torch.float32", ".to(", "autocast"):
        assert part in msg, (part, msg)
    with pytest.raises(TypeError, match=r"\.to\(torch\.float64\)"):
        m(x.double())
    # the fixes the message names work
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert m.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_module_device_mismatch_names_the_module_and_the_fix():
    m = gf.GradResMLP(4, 5, device="meta")
    with pytest.raises(ValueError) as info:
        m(torch.randn(3, 4))
    msg = str(info.value)
    for part in ("GradResMLP", "fc1.weight", "meta", "cpu", ".to("):
        assert part in msg, (part, msg)


def test_module_non_tensor_input_names_x():
    with pytest.raises(TypeError, match="x"):
        gf.GradResMLP(4, 5)([[1.0, 2.0, 3.0, 4.0]])
