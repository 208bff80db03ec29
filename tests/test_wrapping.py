"""GradientResidual around any block (issue #34): the fused path for the blocks it recognizes,
the reference math for the rest, batch statistics, alpha's dtype, and `convert` on an EDSR laid
out as the common SR codebases lay it out."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradres_fused as gf
from gradres_fused import reference
from gradres_fused.wrapping import recognize

from conftest import assert_parity

BACKENDS = gf.available_backends("cpu")
FUSED_BACKENDS = [b for b in BACKENDS if b != "reference"]
ACT_MODULES = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU,
               "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU,
               "tanh": nn.Tanh}
MODES = [True, False]


def mlp_block(activation, d=5, h=7, bias=(True, True)):
    return nn.Sequential(nn.Linear(d, h, bias=bias[0]), ACT_MODULES[activation](),
                         nn.Linear(h, d, bias=bias[1])).double()


def conv_block(activation, c=3, cm=4, k=(3, 1), bias=(True, True), padding="same"):
    pads = [kk // 2 for kk in k] if padding is None else [padding] * 2
    return nn.Sequential(nn.Conv2d(c, cm, k[0], padding=pads[0], bias=bias[0]),
                         ACT_MODULES[activation](),
                         nn.Conv2d(cm, c, k[1], padding=pads[1], bias=bias[1])).double()


def run(module, x, proj):
    """y and the gradients of Σ y·proj w.r.t. x and every parameter (alpha included)."""
    x = x.detach().requires_grad_()
    y = module(x)
    params = [x] + list(module.parameters())
    grads = torch.autograd.grad((y * proj).sum(), params)
    return [y.detach()] + [g.detach() for g in grads]


def assert_matches_reference_math(wrapped, x):
    """`wrapped` against GradientResidual's reference math on the same module and alpha."""
    ref = copy.deepcopy(wrapped)
    ref.backend = "reference"
    proj = torch.randn_like(x)
    assert_parity(run(wrapped, x, proj), run(ref, x, proj), x.dtype)


# (family, activation, block builder, input shape, scale): every activation of each family,
# biases absent, unequal kernel sizes, EDSR's res_scale.
PATTERNS = [
    *[("mlp", a, lambda a=a: mlp_block(a), (6, 5), 1.0) for a in ACT_MODULES],
    ("mlp", "silu", lambda: mlp_block("silu", bias=(False, True)), (3, 5), 0.1),
    ("mlp", "relu", lambda: mlp_block("relu", d=1, h=1, bias=(True, False)), (4, 1), 1.0),
    *[("conv2d", a, lambda a=a: conv_block(a), (2, 3, 5, 4), 1.0) for a in ACT_MODULES],
    ("conv2d", "relu", lambda: conv_block("relu", k=(3, 3), padding=None), (1, 3, 4, 6), 0.1),
    ("conv2d", "gelu", lambda: conv_block("gelu", k=(5, 3), bias=(False, True)), (2, 3, 6, 5),
     0.5),
]
PATTERN_IDS = [f"{p[0]}-{p[1]}-{i}" for i, p in enumerate(PATTERNS)]


@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("backend", [b for b in FUSED_BACKENDS if b != "triton"])
@pytest.mark.parametrize("family,activation,make,shape,scale", PATTERNS, ids=PATTERN_IDS)
def test_recognized_block_runs_fused_with_reference_parity(family, activation, make, shape,
                                                           scale, backend, detach):
    block = make()
    wrapped = gf.GradientResidual(block, alpha_init=0.3, detach=detach, backend=backend,
                                  scale=scale)
    found = recognize(block)
    assert (found.family, found.activation) == (family, activation)
    assert wrapped.fused and wrapped.fused_reason is None and "path='fused'" in repr(wrapped)
    assert_matches_reference_math(wrapped, torch.randn(shape, dtype=torch.float64))


TRITON_PATTERNS = [PATTERNS[4], PATTERNS[7], PATTERNS[10]]  # the interpreter is slow: a few


@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("family,activation,make,shape,scale", TRITON_PATTERNS,
                         ids=[p[1] + "-" + p[0] for p in TRITON_PATTERNS])
def test_recognized_block_on_triton(family, activation, make, shape, scale, detach):
    if "triton" not in BACKENDS:
        pytest.skip("triton backend not available (TRITON_INTERPRET=0 on CPU)")
    wrapped = gf.GradientResidual(make(), alpha_init=-0.2, detach=detach, backend="triton",
                                  scale=scale)
    assert_matches_reference_math(wrapped, torch.randn(shape, dtype=torch.float64))


def test_recognized_block_uses_the_modules_own_parameters_and_keys():
    block = conv_block("silu").float()
    wrapped = gf.GradientResidual(block)
    assert wrapped.module is block and wrapped.module[0].weight is block[0].weight
    keys = {"module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias", "alpha"}
    assert set(wrapped.state_dict()) == keys
    on_reference = gf.GradientResidual(copy.deepcopy(block), backend="reference")
    assert list(on_reference.state_dict()) == list(wrapped.state_dict())
    on_reference.load_state_dict(wrapped.state_dict())
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(wrapped(x), on_reference(x), rtol=1e-5, atol=1e-6)
    wrapped(x).square().sum().backward()
    assert block[0].weight.grad is not None and block[2].bias.grad is not None
    assert wrapped.alpha.grad is not None


# Blocks it does not recognize, with the element the reason must name.
UNRECOGNIZED = [
    (lambda: nn.Linear(4, 4), "not an nn.Sequential", (3, 4)),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "of 2 modules", (3, 4)),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.LeakyReLU(), nn.Linear(5, 4)), "module[1]",
     (3, 4)),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.Softplus(), nn.Linear(5, 4)), "module[1]", (3, 4)),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Conv2d(5, 4, 1)), "module[0] and", None),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), "module[2].out_features",
     None),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh(),
                           nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)), "module[0] and",
     (2, 3, 6, 6)),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.Tanh(),
                           nn.Conv2d(4, 3, 3, padding=1)), "module[0].stride", None),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=0), nn.Tanh(),
                           nn.Conv2d(4, 3, 1)), "module[0].padding", None),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, (3, 5), padding=(1, 2)), nn.Tanh(),
                           nn.Conv2d(4, 3, 3, padding=1)), "module[0].kernel_size", (2, 3, 5, 6)),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(),
                           nn.Conv2d(4, 3, 2, padding=1)), "module[2].kernel_size", None),
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Tanh(),
                           nn.Conv2d(4, 4, 3, padding=1)), "module[0].groups", (2, 4, 5, 6)),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.Tanh(),
                           nn.Conv2d(4, 3, 3, padding=1)), "module[0].padding", None),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(),
                           nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect")),
     "module[2].padding_mode", (2, 3, 5, 6)),
    (lambda: _hooked(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 4))),
     "module[2] has forward hooks", (3, 4)),
    (lambda: nn.Sequential(nn.LazyLinear(5), nn.ReLU(), nn.Linear(5, 4)), "LazyLinear", None),
]


def _hooked(seq):
    seq[2].register_forward_hook(lambda mod, args, out: out * 2)
    return seq


@pytest.mark.parametrize("make,element,shape", UNRECOGNIZED,
                         ids=[u[1].split()[0] + str(i) for i, u in enumerate(UNRECOGNIZED)])
def test_unrecognized_block_runs_reference_math_and_a_fused_backend_refuses_it(make, element,
                                                                               shape):
    block = make().double()
    wrapped = gf.GradientResidual(block, alpha_init=0.2)
    assert not wrapped.fused and element in wrapped.fused_reason, wrapped.fused_reason
    assert element in repr(wrapped)
    for backend in ("composite", "cpp", "triton"):
        with pytest.raises(ValueError, match="backend") as info:
            gf.GradientResidual(block, backend=backend)
        assert element in str(info.value) and "backend='auto'" in str(info.value)
    if shape is not None:  # auto: the reference math on the module's own forward (hooks run)
        x = torch.randn(shape, dtype=torch.float64)
        want = reference.gradient_residual(block, x, wrapped.alpha, normalize=True, eps=1e-6,
                                           detach=True)
        torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-12)


def test_block_changed_after_construction_runs_what_it_now_computes():
    block = mlp_block("relu")
    wrapped = gf.GradientResidual(block, alpha_init=0.1)
    assert wrapped.fused
    block[1] = nn.LeakyReLU(0.3)
    assert not wrapped.fused and "LeakyReLU" in wrapped.fused_reason
    x = torch.randn(4, 5, dtype=torch.float64)
    want = reference.gradient_residual(block, x, wrapped.alpha, normalize=True, eps=1e-6,
                                       detach=True)
    torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-12)
    # a parametrization registered afterwards changes the layer's type
    param = gf.GradientResidual(mlp_block("tanh"), alpha_init=0.1)
    assert param.fused
    torch.nn.utils.parametrizations.weight_norm(param.module[2])
    assert not param.fused and "Parametrized" in param.fused_reason
    want = reference.gradient_residual(param.module, x, param.alpha, normalize=True, eps=1e-6,
                                       detach=True)
    torch.testing.assert_close(param(x), want, rtol=0, atol=1e-12)
    named = gf.GradientResidual(mlp_block("relu"), backend="composite")
    named.module[0].register_forward_pre_hook(lambda mod, args: None)
    assert not named.fused and "hooks" in named.fused_reason and "hooks" in repr(named)
    with pytest.raises(ValueError, match=r"module\[0\] has forward hooks"):
        named(x)


def test_mlp_pattern_on_more_than_two_dims_keeps_gradient_residual_semantics():
    """GradientResidual's sample is dim 0 (ĝ normalized over all other dims); the fused MLP op
    normalizes every row: on (B, T, D) auto runs the reference math, a named backend refuses."""
    block = mlp_block("gelu")
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    auto = gf.GradientResidual(block, alpha_init=0.5)
    want = reference.gradient_residual(block, x, auto.alpha, normalize=True, eps=1e-6,
                                       detach=True)
    torch.testing.assert_close(auto(x), want, rtol=0, atol=1e-12)
    rowwise = gf.gradres_mlp(x, block[0].weight, block[0].bias, block[2].weight, block[2].bias,
                             auto.alpha, activation="gelu")
    assert (rowwise - want).abs().max() > 1e-3  # the two normalizations do differ
    with pytest.raises(ValueError, match=r"x: .*2-D inputs.*GradResMLP"):
        gf.GradientResidual(block, backend="composite")(x)


def test_fused_path_checks_inputs_like_the_fused_modules():
    wrapped = gf.GradientResidual(conv_block("relu").float())
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(TypeError) as info:
        wrapped(x.double())
    for part in ("GradientResidual", "module.0.weight", "torch.float64", ".to("):
        assert part in str(info.value), (part, str(info.value))
    with pytest.raises(TypeError, match="x"):
        wrapped([[1.0]])
    with pytest.raises(ValueError, match="w1"):
        wrapped(torch.randn(2, 4, 5, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert wrapped(x).dtype == torch.bfloat16


def test_gradient_residual_options_are_validated():
    block = mlp_block("relu")
    for kwargs, exc, name in [({"backend": "cuda"}, ValueError, "backend"),
                              ({"backend": None}, TypeError, "backend"),
                              ({"scale": "0.1"}, TypeError, "scale"),
                              ({"scale": float("nan")}, ValueError, "scale"),
                              ({"batch_stats": "freeze"}, ValueError, "batch_stats")]:
        with pytest.raises(exc, match=name):
            gf.GradientResidual(block, **kwargs)


def test_scale_multiplies_f_on_the_reference_path_too():
    block = nn.Sequential(nn.Linear(4, 4), nn.Softplus()).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    wrapped = gf.GradientResidual(block, alpha_init=0.4, scale=0.25)
    want = reference.gradient_residual(lambda t: 0.25 * block(t), x, wrapped.alpha,
                                       normalize=True, eps=1e-6, detach=True)
    torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: mlp_block("tanh"), lambda: nn.Linear(4, 4).double(),
                                  lambda: nn.Sequential(nn.Linear(4, 4), nn.Softplus()).double()])
def test_alpha_takes_the_dtype_and_device_of_the_wrapped_module(make):
    wrapped = gf.GradientResidual(make())
    assert wrapped.alpha.dtype == torch.float64 and wrapped.alpha.device.type == "cpu"
    dim = wrapped.module[0].in_features if isinstance(wrapped.module, nn.Sequential) else 4
    wrapped(torch.randn(3, dim, dtype=torch.float64)).sum().backward()
    assert wrapped.alpha.grad.dtype == torch.float64
    assert gf.GradientResidual(nn.Linear(2, 2, device="meta")).alpha.device.type == "meta"
    assert gf.GradientResidual(nn.Identity()).alpha.dtype == torch.get_default_dtype()


def test_recognized_block_exports_and_compiles():
    """The fused path has no autograd.grad in its forward: torch.export and torch.compile trace it
    (the reference math cannot be exported, tests/test_training_stack.py)."""
    wrapped = gf.GradientResidual(mlp_block("silu").float(), backend="composite", scale=0.5,
                                  alpha_init=0.2)
    x = torch.randn(4, 5)
    exported = torch.export.export(wrapped, (x,)).module()
    torch.testing.assert_close(exported(x), wrapped(x), rtol=1e-6, atol=1e-6)
    from conftest import assert_compiled_matches_eager
    assert_compiled_matches_eager(wrapped, x, compile_backend="eager")


# ---- batch statistics ----------------------------------------------------------------------------
def bn_block(bn=nn.BatchNorm2d):
    """A ResNet basic block's F: conv–BN–ReLU–conv–BN."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bn(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, padding=1), bn(3)).double()


@pytest.mark.parametrize("bn", [nn.BatchNorm2d, nn.SyncBatchNorm, nn.LazyBatchNorm2d],
                         ids=["BatchNorm2d", "SyncBatchNorm", "LazyBatchNorm2d"])
def test_batch_statistics_raise_naming_the_submodule(bn):
    block = bn_block(lambda c: bn() if bn is nn.LazyBatchNorm2d else bn(c))
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    wrapped = gf.GradientResidual(block)
    with pytest.raises(ValueError) as info:
        wrapped(x)
    msg = str(info.value)
    for part in ("module.1", bn.__name__, "batch statistics", "training mode", "g ≡ 0",
                 "batch_stats='frozen'", "batch_stats='allow'"):
        assert part in msg, (part, msg)


def test_batch_statistics_in_eval_mode_are_running_statistics():
    block = bn_block()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    wrapped = gf.GradientResidual(block, alpha_init=0.3).eval()
    want = reference.gradient_residual(block, x, wrapped.alpha, normalize=True, eps=1e-6,
                                       detach=True)
    torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-12)
    # without running statistics a BatchNorm normalizes with the batch's even in eval mode
    untracked = gf.GradientResidual(nn.Sequential(nn.Linear(3, 3),
                                                  nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match=r"module\.1 \(BatchNorm1d\).*no running statistics"):
        untracked.eval()(torch.randn(4, 3))


def test_batch_statistics_allow_keeps_autograds_g():
    block = bn_block()
    twin = copy.deepcopy(block)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    wrapped = gf.GradientResidual(block, batch_stats="allow", normalize=False, alpha_init=0.3)
    want = reference.gradient_residual(twin, x, wrapped.alpha, normalize=False, eps=1e-6,
                                       detach=True)
    torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-12)
    m = torch.sigmoid(wrapped.alpha)
    # F ends in a BatchNorm: Σ over the batch is a constant per channel, g ≡ 0
    torch.testing.assert_close(want, twin(x) + (1 - m) * x, rtol=0, atol=1e-12)


def _frozen_expected(block, x, alpha, detach):
    """y with g the per-sample Jacobianᵀ·1 at the batch statistics held constant, from torch.func
    (vmap of per-sample grad) on a functional copy of the conv–BN–ReLU–conv–BN block."""
    conv1, bn1, _, conv2, bn2 = block

    def forward(t, stats=None):  # stats None: the batch's, live (as training normalizes)
        seen = []

        def norm(h, bn, i):
            var, mean = torch.var_mean(h.detach(), dim=(0, 2, 3), correction=0)
            seen.append((mean, var))
            if stats is None:
                return F.batch_norm(h, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
            return F.batch_norm(h, *stats[i], bn.weight, bn.bias, False, 0.0, bn.eps)
        out = norm(conv2(torch.relu(norm(conv1(t), bn1, 0))), bn2, 1)
        return out, seen

    fx, stats = forward(x)
    g = torch.func.vmap(torch.func.grad(lambda xi: forward(xi[None], stats)[0].sum()))(x)
    if detach:
        g = g.detach()
    g_hat = g / torch.sqrt(g.square().sum((1, 2, 3), keepdim=True) + 1e-12)
    m = torch.sigmoid(alpha.reshape(()))
    return fx + (1 - m) * x + m * g_hat


@pytest.mark.parametrize("detach", MODES)
def test_batch_statistics_frozen_is_the_per_sample_jacobian_at_the_batch_statistics(detach):
    block = bn_block()
    plain = copy.deepcopy(block)
    wrapped = gf.GradientResidual(block, batch_stats="frozen", alpha_init=0.3, detach=detach)
    x = torch.randn(5, 3, 4, 6, dtype=torch.float64)
    proj = torch.randn_like(x)
    got = run(wrapped, x, proj)

    class Expected(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.alpha = copy.deepcopy(block), copy.deepcopy(wrapped.alpha)

        def forward(self, t):
            return _frozen_expected(self.block, t, self.alpha, detach)
    want = run(Expected(), x, proj)  # parameters in the same order: alpha, then the block's
    assert_parity(got, want, torch.float64)
    # the running statistics moved exactly as one plain training forward moves them
    plain(x)
    for i in (1, 4):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(block[i], name), getattr(plain[i], name),
                                       rtol=0, atol=1e-15)
    assert block[1].training and block[4].training


def test_batch_statistics_frozen_replays_dropout_and_agrees_with_eval_mode():
    block = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Tanh(),
                          nn.Linear(8, 6)).double()
    wrapped = gf.GradientResidual(block, batch_stats="frozen", alpha_init=40.0)  # m ≈ 1: y ≈ ĝ
    x = torch.randn(7, 6, dtype=torch.float64)
    torch.manual_seed(1)
    y = wrapped(x)
    after_wrapped = torch.rand(3)
    torch.manual_seed(1)
    twin = copy.deepcopy(block)
    fx = twin(x)
    assert torch.equal(torch.rand(3), after_wrapped)  # one forward's worth of random numbers
    # g: Jacobianᵀ·1 with the batch statistics and the same dropout mask held fixed, by
    # autograd on a frozen functional copy (seed 1 again: the first draw is the mask)
    with torch.no_grad():
        h = block[0](x)
        var, mean = torch.var_mean(h, dim=0, correction=0)
    torch.manual_seed(1)
    xin = x.clone().requires_grad_()
    out = block[4](torch.tanh(block[2](F.batch_norm(block[0](xin), mean, var, block[1].weight,
                                                    block[1].bias, False, 0.0, block[1].eps))))
    (g,) = torch.autograd.grad(out.sum(), xin)
    g_hat = g / torch.sqrt(g.square().sum(1, keepdim=True) + 1e-12)
    m = torch.sigmoid(wrapped.alpha)
    torch.testing.assert_close(y, fx + (1 - m) * x + m * g_hat, rtol=0, atol=1e-12)
    # eval mode: g at the running statistics, one pass, the same definition
    wrapped.eval()
    want = reference.gradient_residual(block, x, wrapped.alpha, normalize=True, eps=1e-6,
                                       detach=True)
    torch.testing.assert_close(wrapped(x), want, rtol=0, atol=1e-12)


# ---- convert: an EDSR laid out as the common SR codebases lay it out -----------------------------
class ResidualBlockNoBN(nn.Module):
    """conv–ReLU–conv with res_scale, as in BasicSR / the EDSR reference code."""

    def __init__(self, num_feat=8, res_scale=1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class EDSR(nn.Module):
    def __init__(self, num_feat=8, num_block=3, res_scale=0.1, scale=2):
        super().__init__()
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat, res_scale)
                                    for _ in range(num_block)))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(num_feat, num_feat * scale * scale, 3, 1, 1),
                                      nn.PixelShuffle(scale))
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x):
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x)) + x
        return self.conv_last(self.upsample(res))


def to_gradres(model, **options):
    return gf.convert(model, lambda m: isinstance(m, ResidualBlockNoBN),
                      lambda m: nn.Sequential(m.conv1, m.relu, m.conv2),
                      scale=lambda m: m.res_scale, **options)


def hand_built(model, alpha_init, detach, backend):
    """The same model with every block rebuilt by hand as a GradResConv2d (weights copied)."""
    twin = copy.deepcopy(model)
    for i, blk in enumerate(model.body):
        fused = gf.GradResConv2d(blk.conv1.in_channels, res_scale=blk.res_scale,
                                 alpha_init=alpha_init, detach=detach, backend=backend,
                                 dtype=blk.conv1.weight.dtype)
        fused.conv1.load_state_dict(blk.conv1.state_dict())
        fused.conv2.load_state_dict(blk.conv2.state_dict())
        twin.body[i] = fused
    return twin


def _step(model, x, proj, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    y = model(x)
    (y * proj).sum().backward()
    opt.step()
    return y.detach()


@pytest.mark.parametrize("detach", MODES)
def test_convert_an_edsr_matches_hand_built_fused_blocks_and_trains(detach):
    model = EDSR().double()
    hand = hand_built(model, 0.2, detach, "reference")
    weights = [blk.conv1.weight for blk in model.body]
    assert to_gradres(model, alpha_init=0.2, detach=detach) is model
    for blk, w in zip(model.body, weights):
        assert isinstance(blk, gf.GradientResidual) and blk.fused and blk.scale == 0.1
        assert blk.module[0].weight is w  # the same parameters, not copies
        assert blk.alpha.dtype == torch.float64
    assert {k for k in model.state_dict() if k.startswith("body.0.")} == {
        "body.0.module.0.weight", "body.0.module.0.bias", "body.0.module.2.weight",
        "body.0.module.2.bias", "body.0.alpha"}
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    proj = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    assert_parity(run(model, x, proj), run(hand, x, proj), torch.float64)
    # one training step on both, then the outputs again
    _step(model, x, proj), _step(hand, x, proj)
    for (name, p), (_, q) in zip(model.named_parameters(), hand.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-9, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hand(x), rtol=0, atol=1e-9)


def test_convert_options_and_refusals():
    model = EDSR(res_scale=0.5).float()
    to_gradres(model, backend="composite", learn_alpha=False)
    assert all(blk.backend == "composite" and blk.scale == 0.5 and "alpha" not in
               dict(blk.named_parameters()) for blk in model.body)
    with pytest.raises(ValueError, match="match: no submodule"):
        to_gradres(nn.Sequential(nn.Linear(2, 2)))
    single = ResidualBlockNoBN()
    wrapped = to_gradres(single)  # the model itself matches: the wrapper comes back
    assert isinstance(wrapped, gf.GradientResidual) and wrapped.module[0] is single.conv1
    with pytest.raises(ValueError, match=r"backend='cpp'.*module\[1\]"):
        gf.convert(EDSR(), lambda m: isinstance(m, ResidualBlockNoBN),
                   lambda m: nn.Sequential(m.conv1, nn.LeakyReLU(), m.conv2), backend="cpp")
