"""The `cpp` backend beyond parity (which test_parity.py / test_gradcheck.py run for every backend):
torch.library.opcheck on every op, op-level bad input, strides, third order through the fused
backward, torch.compile tracing, and CUDA parity when a GPU and a CUDA build are present."""
import functools

import pytest
import torch

import gradres_fused as gf
from gradres_fused import cpp
from conftest import (ACTIVATIONS, assert_compiled_matches_eager, assert_parity, conv_inputs,
                      leaves, mlp_inputs, outputs_and_grads)

pytestmark = pytest.mark.skipif(cpp.IMPORT_ERROR is not None,
                                reason=f"cpp backend not built: {cpp.IMPORT_ERROR}")
ops = torch.ops.gradres_fused
cuda_only = pytest.mark.skipif(not (torch.cuda.is_available() and cpp.built_with_cuda()),
                               reason="needs a CUDA device and gradres_fused._C built with CUDA")


def test_cpp_schemas_match_fused_op():
    """csrc/ops.cpp defines the cpp ops' schemas; fused_op.FWD_SCHEMA/BWD_SCHEMA (the triton ops',
    and what the shared fake kernels and autograd assume) must be the same."""
    from gradres_fused import fused_op

    for family in ("mlp", "conv2d"):
        for qualname, schema in zip(fused_op.OP_NAMES["cpp", family],
                                    (fused_op.FWD_SCHEMA, fused_op.BWD_SCHEMA)):
            want = torch._C.parse_schema(qualname + schema)
            got = fused_op.op(qualname)._schema
            assert str(got) == str(want)


def test_forward_autograd_is_the_cpp_kernel():
    """The forward ops' autograd is the C++ kernel of csrc/autograd.cpp (Python's
    register_autograd path costs ~0.1-0.15 ms per block and step); the backward ops' autograd is
    fused_op's Python one (its backward is the composite VJP), registered from Python."""
    for family in ("mlp", "conv"):
        fwd = torch._C._dispatch_dump(f"gradres_fused::{family}_fwd")
        bwd = torch._C._dispatch_dump(f"gradres_fused::{family}_bwd")
        autograd_line = [line for line in fwd.splitlines() if line.startswith("Autograd")]
        assert len(autograd_line) == 1 and "autograd.cpp" in autograd_line[0], fwd
        bwd_line = [line for line in bwd.splitlines() if line.startswith("Autograd")]
        assert len(bwd_line) == 1 and "autograd.cpp" not in bwd_line[0], bwd


def _detached(inputs):
    return [None if t is None else t.detach() for t in inputs]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_opcheck(family, detach, normalize, bias):
    if family == "mlp":
        x, w1, b1, w2, b2, alpha = mlp_inputs(5, 4, 3, bias=bias)
    else:
        x, w1, b1, w2, b2, alpha = conv_inputs(2, 2, 3, 5, 3, bias=bias)
    alpha = alpha.detach().reshape(1).requires_grad_()
    fwd, bwd = getattr(ops, f"{family}_fwd"), getattr(ops, f"{family}_bwd")
    args = (x, w1, b1, w2, b2, alpha, "silu", normalize, 1e-6, detach)
    torch.library.opcheck(fwd, args)
    _, z, a, g_hat, r = fwd(*_detached(args[:6]), *args[6:])
    y_bar = torch.randn_like(x)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic")
    if family == "conv":
        # The conv backward's own backward differentiates convolution_backward, whose double
        # backward (ConvolutionBackwardBackward0) PyTorch cannot trace with symbolic shapes
        # ("SymIntArrayRef expected to contain only concrete integers"): trace it static.
        tests = tests[:3] + ("test_aot_dispatch_static",)
    torch.library.opcheck(bwd, (y_bar.requires_grad_(), x, w1, b1, w2, alpha, z, a, g_hat, r,
                                "silu", normalize, 1e-6, detach), test_utils=tests)


def test_op_errors_name_the_argument():
    x, w1, b1, w2, b2, alpha = _detached(mlp_inputs(4, 3, 5))
    with pytest.raises(TypeError, match="w2"):
        ops.mlp_fwd(x, w1, b1, w2.float(), b2, alpha, "relu", True, 1e-6, True)
    with pytest.raises(ValueError, match="activation"):
        ops.mlp_fwd(x, w1, b1, w2, b2, alpha, "mish", True, 1e-6, True)
    with pytest.raises(ValueError, match="w1 \\(H, D\\)"):
        ops.mlp_fwd(x, w1.t(), b1, w2, b2, alpha, "relu", True, 1e-6, True)
    y_bar = torch.randn_like(x)
    # relu keeps a (z is a placeholder), silu keeps z (a is): the kept one is checked.
    for activation, kept in (("relu", 7), ("silu", 6)):
        _, z, a, g_hat, r = ops.mlp_fwd(x, w1, b1, w2, b2, alpha, activation, True, 1e-6, True)
        bwd_args = [y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, activation, True, 1e-6, True]
        hidden = bwd_args[kept]
        for i, bad, name in ((kept, hidden[:, :2], "z" if kept == 6 else "a"),
                             (kept, hidden[:1], "z" if kept == 6 else "a"),
                             (8, g_hat[:2], "g_hat"), (9, r[:1], "r"),
                             (0, y_bar.float(), "y_bar"), (13 - kept, z.float(), "z|a")):
            args = list(bwd_args)
            args[i] = bad
            with pytest.raises((ValueError, TypeError), match=name):
                ops.mlp_bwd(*args)
    cx, cw1, cb1, cw2, cb2, calpha = _detached(conv_inputs(1, 2, 3, 5, 5))
    with pytest.raises(ValueError, match="odd"):
        ops.conv_fwd(cx, cw1[..., :2, :2], cb1, cw2, cb2, calpha, "relu", True, 1e-6, True)


def test_non_contiguous_inputs_give_reference_results():
    """Transposed and sliced views: the op makes them contiguous rather than read by stride."""
    x, w1, b1, w2, b2, alpha = _detached(mlp_inputs(6, 5, 7))
    xt = x.t().contiguous().t().requires_grad_()            # column-major x
    w1s = torch.randn(7, 10, dtype=torch.float64)[:, ::2].requires_grad_()  # strided w1
    inputs = [xt, w1s, b1.requires_grad_(), w2.requires_grad_(), b2.requires_grad_(),
              alpha.requires_grad_()]
    assert not xt.is_contiguous() and not w1s.is_contiguous()
    proj = torch.randn(6, 5, dtype=torch.float64)
    for detach in (True, False):
        got, n = outputs_and_grads(functools.partial(gf.gradres_mlp, backend="cpp",
                                                     detach=detach), inputs, proj)
        want, _ = outputs_and_grads(functools.partial(gf.gradres_mlp, backend="reference",
                                                      detach=detach), inputs, proj)
        assert_parity(got, want, torch.float64, first_order=n)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda_only, pytest.mark.cuda])])
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format],
                         ids=["channels_last", "contiguous"])
def test_conv_keeps_the_layout_of_x(layout, detach, device):
    """y and x̄ come back in x's layout and W̄ in W's (as the reference's do), equal to the
    reference's; the block computes in x's layout (z, a, ĝ are kept in it: no layout copies of
    activations); the fake kernels say the same layouts."""
    base = [t.to(device) for t in _detached(conv_inputs(3, 4, 5, 6, 7))]
    inputs = [t.contiguous(memory_format=layout) if t.dim() == 4 else t for t in base]
    assert inputs[0].is_contiguous() == (layout == torch.contiguous_format)
    inputs = [t.requires_grad_() for t in inputs]
    proj = torch.randn(inputs[0].shape, dtype=torch.float64, device=device)

    def block(backend):
        return functools.partial(gf.gradres_conv2d, activation="silu", detach=detach,
                                 backend=backend)
    y = block("cpp")(*inputs)
    x_bar, w1_bar, w2_bar = torch.autograd.grad((y * proj).sum(), [inputs[i] for i in (0, 1, 3)])
    assert y.is_contiguous(memory_format=layout)
    assert all(t.is_contiguous(memory_format=layout) for t in (x_bar, w1_bar, w2_bar))
    got, n = outputs_and_grads(block("cpp"), inputs, proj)
    want, _ = outputs_and_grads(block("reference"), inputs, proj)
    assert_parity([t.cpu() for t in got], [t.cpu() for t in want], torch.float64, first_order=n)
    args = (*_detached(inputs), "silu", True, 1e-6, detach)
    torch.library.opcheck(ops.conv_fwd, args, test_utils=("test_schema", "test_faketensor"))
    _, z, a, g_hat, r = ops.conv_fwd(*args)
    assert a.shape == (1,)  # silu keeps z only
    assert all(t.is_contiguous(memory_format=layout) for t in (z, g_hat))
    torch.library.opcheck(ops.conv_bwd, (proj, args[0], args[1], args[2], args[3], args[5], z, a,
                                         g_hat, r, *args[6:]),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_conv_smap_reads_a_channels_last_w2_with_the_same_bits(dtype):
    """The S-map sums W2 over its output channels straight from W2's memory: a channels_last W2
    (its own vectorized loop) gives the bits a contiguous one does, so y and ĝ are identical (the
    convolutions see W2 in x's layout either way)."""
    x, w1, b1, w2, b2, alpha = _detached(conv_inputs(2, 24, 40, 9, 7, k2=5, dtype=dtype))
    w2_cl = w2.contiguous(memory_format=torch.channels_last)
    assert not w2_cl.is_contiguous()
    for detach in (True, False):
        want = ops.conv_fwd(x, w1, b1, w2, b2, alpha, "gelu", True, 1e-6, detach)
        got = ops.conv_fwd(x, w1, b1, w2_cl, b2, alpha, "gelu", True, 1e-6, detach)
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_conv_empty_batch_gradients_are_zero():
    x, w1, b1, w2, b2, alpha = conv_inputs(0, 2, 3, 5, 3)
    y = gf.gradres_conv2d(x, w1, b1, w2, b2, alpha, backend="cpp", detach=False)
    y.sum().backward()
    for t in (w1, b1, w2, b2, alpha):
        assert torch.equal(t.grad, torch.zeros_like(t)), t.shape


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda_only, pytest.mark.cuda])])
@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_saved_norms_stay_float32_for_bfloat16(family, device):
    """The ops take bfloat16 as it is (on CPU too) and keep the saved r in float32. Small integer
    inputs and weights with relu make every bfloat16 GEMM/conv exact, so r must be the float32 of
    the exact norm — where rounding r to bfloat16 would cost up to 2⁻⁹."""
    def ints(*shape, lo=-1, hi=1):
        return torch.randint(lo, hi + 1, shape).to(torch.float64)
    if family == "mlp":  # |s| ≤ 16, |g| ≤ 16·16: integers bfloat16 holds exactly
        x, w1, w2 = ints(256, 16, lo=-3, hi=3), ints(16, 16), ints(16, 16)
    else:  # 1×1 first conv: |g| ≤ Cm·|s| ≤ 2·18
        x, w1, w2 = ints(16, 2, 8, 8, lo=-3, hi=3), ints(2, 2, 1, 1), ints(2, 2, 3, 3)
    b1, b2, alpha, eps = ints(w1.shape[0]), ints(w2.shape[0]), torch.tensor([0.5]), 1e-6
    xg = x.clone().requires_grad_()
    f = (torch.relu(xg @ w1.t() + b1) @ w2.t() if family == "mlp" else
         torch.nn.functional.conv2d(torch.relu(torch.nn.functional.conv2d(xg, w1, b1)), w2,
                                    padding=1))
    (g,) = torch.autograd.grad(f.sum(), xg)
    want = (g.flatten(1).square().sum(1) + eps * eps).sqrt()

    fwd, bwd = getattr(ops, f"{family}_fwd"), getattr(ops, f"{family}_bwd")
    args = ("relu", True, eps, False)
    inputs = [t.to(device, torch.bfloat16) for t in (x, w1, b1, w2, b2, alpha)]
    _, z, a, g_hat, r = fwd(*inputs, *args)
    assert r.dtype == torch.float32 and g_hat.dtype == torch.bfloat16
    err = ((r.cpu().double() - want).abs() / want).max().item()
    err_if_rounded = ((r.cpu().bfloat16().double() - want).abs() / want).max().item()
    assert err <= 2.0 ** -24 and err_if_rounded > 2.0 ** -12, (err, err_if_rounded)
    # The backward takes the float32 r, and names r when given one of x's dtype.
    x, w1, b1, w2, b2, alpha = inputs
    y_bar = torch.randn_like(x)
    grads = bwd(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, *args)
    assert all(t.dtype == torch.bfloat16 for t in grads)
    with pytest.raises(TypeError, match="r: expected dtype Float"):
        bwd(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r.bfloat16(), *args)
    torch.library.opcheck(fwd, (*inputs, *args), test_utils=("test_schema", "test_faketensor"))


def _at_thread_counts(fn, counts=(1, 2, 3)):
    """fn() run with each intra-op thread count in turn (the setting restored afterwards)."""
    threads = torch.get_num_threads()
    try:
        results = []
        for count in counts:
            torch.set_num_threads(count)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
def test_reductions_are_bit_identical_for_any_thread_count(detach, dtype):
    """ᾱ and the column sums (b̄1) split the rows into chunks fixed by the shape, not by the thread
    count. With W1 = W2 = I every GEMM before those reductions is exact (products with 0 and 1),
    so any difference between thread counts would come from the reductions' grouping. (float32
    runs the CPU's widest kernels, float64 the baseline ones.)"""
    n, dim = 20000, 16  # several row chunks at this width
    x = torch.randn(n, dim, dtype=dtype)
    eye = torch.eye(dim, dtype=dtype)
    b1, b2, alpha = torch.randn(dim, dtype=dtype), None, torch.tensor([0.3], dtype=dtype)
    args = ("silu", True, 1e-6, detach)
    _, z, a, g_hat, r = ops.mlp_fwd(x, eye, b1, eye, b2, alpha, *args)
    y_bar = torch.randn_like(x)
    results = _at_thread_counts(
        lambda: ops.mlp_bwd(y_bar, x, eye, b1, eye, alpha, z, a, g_hat, r, *args))
    for res in results[1:]:
        assert torch.equal(res[2], results[0][2])  # b̄1
        assert torch.equal(res[5], results[0][5])  # ᾱ


@pytest.mark.parametrize("shape", [(3, 8, 40, 40), (2, 16, 48, 48)],
                         ids=["12800_columns", "36864_columns"])
def test_conv_column_sums_are_bit_identical_for_any_thread_count(shape):
    """Wide rows (conv: C·H·W columns) take the column-tiled path of the column sums (from 32768
    columns on, summed straight in double), and b̄1's per-channel sums split the channels over
    the threads: b̄1 and ᾱ must not depend on the thread count either. 1×1 identity kernels keep
    the convs exact. (W̄1, W̄2 and b̄2 come from oneDNN's weight-gradient convolutions, whose own
    reductions are not fixed across thread counts.)"""
    x = torch.randn(*shape)
    c = shape[1]
    eye = torch.eye(c).view(c, c, 1, 1)
    args = ("tanh", True, 1e-6, False)
    alpha = torch.tensor([0.3])
    _, z, a, g_hat, r = ops.conv_fwd(x, eye, torch.randn(c), eye, None, alpha, *args)
    y_bar = torch.randn_like(x)
    results = _at_thread_counts(
        lambda: ops.conv_bwd(y_bar, x, eye, None, eye, alpha, z, a, g_hat, r, *args))
    for res in results[1:]:
        assert torch.equal(res[2], results[0][2])  # b̄1
        assert torch.equal(res[5], results[0][5])  # ᾱ


# ---- the CPU kernels' instruction sets and vector math ----------------------------------------

_ISA_CHECK = r"""
import torch, gradres_fused as gf
torch.manual_seed(0)
worst = 0.0
for family, shapes in (("mlp", [(50, 13, 37)]), ("conv", [(3, 5, 7, 9, 11)])):
    for shape in shapes:
        for act in ("relu", "gelu", "gelu_tanh", "silu", "tanh", "sin"):
            for detach in (True, False):
                if family == "mlp":
                    n, d, h = shape
                    base = [torch.randn(n, d), torch.randn(h, d) * d ** -0.5, torch.randn(h),
                            torch.randn(d, h) * h ** -0.5, torch.randn(d), torch.tensor([0.4])]
                    fn = gf.gradres_mlp
                else:
                    n, c, cm, hh, ww = shape
                    base = [torch.randn(n, c, hh, ww), torch.randn(cm, c, 3, 3) / 6,
                            torch.randn(cm), torch.randn(c, cm, 3, 3) / 8, torch.randn(c),
                            torch.tensor([0.4])]
                    fn = gf.gradres_conv2d
                out = {}
                for backend, dtype in (("cpp", torch.float32), ("reference", torch.float64)):
                    leaves = [t.to(dtype).requires_grad_() for t in base]
                    y = fn(*leaves, activation=act, detach=detach, backend=backend)
                    proj = torch.sin(torch.arange(y.numel(), dtype=dtype)).view_as(y)
                    out[backend] = [y] + list(torch.autograd.grad((y * proj).sum(), leaves))
                for got, want in zip(out["cpp"], out["reference"]):
                    err = ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()
                    worst = max(worst, err)
print("WORST", worst)
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_cpu_isas_agree_with_the_float64_reference(isa):
    """The float32 loops exist once per instruction set (stages_cpu_loops.h compiled for baseline
    x86-64, AVX2, AVX-512): each copy, forced by GRADRES_CPU_ISA in a fresh process, matches the
    float64 reference on awkward widths (tails shorter than a vector) for every activation."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, GRADRES_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", _ISA_CHECK], env=env, capture_output=True,
                          text=True, timeout=600)
    if f"has no {isa} kernels" in proc.stderr:
        pytest.skip(f"this CPU or build has no {isa} kernels")
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = float(proc.stdout.split("WORST")[1])
    assert worst < 2e-5, worst


def test_cpu_isa_override_names_the_choices():
    import os
    import subprocess
    import sys

    env = dict(os.environ, GRADRES_CPU_ISA="sse9")
    code = ("import torch, gradres_fused as gf; x = torch.randn(2, 3); "
            "gf.gradres_mlp(x, torch.randn(4, 3), None, torch.randn(3, 4), None, torch.zeros(1),"
            " backend='cpp')")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "GRADRES_CPU_ISA: expected base, avx2 or avx512, got 'sse9'" in proc.stderr


# z values from the tails (where exp under/overflows) through the middle, and non-finite ones.
_EXTREME_Z = [-1e4, -120.0, -88.7, -87.5, -60.0, -10.0, -3.0, -1.0, -0.7, -0.3, -1e-3, -1e-6,
              0.0, 1e-6, 1e-3, 0.3, 0.7, 1.0, 3.0, 10.0, 60.0, 87.5, 88.7, 120.0, 1e4]


def _phi_and_dphi_from_the_fused_ops(z: torch.Tensor, activation: str, width: int = 19):
    """φ(z) and φ'(z) as the float32 CPU kernels compute them, read off the ops: x = z (one
    feature), W1 = 1 (width hidden units, so every z fills a row of `width` lanes — not a vector
    multiple — exactly), W2 = 1/width. Unnormalized, the forward's ĝ = Σ_lanes φ'(z)·s·W1 = φ'(z).
    a = φ(z) per lane is the backward's W̄2 = ȳᵀa for one sample and ȳ = 1: the a the forward
    keeps (relu) or the one act_bwd recomputes from z (the others)."""
    x = z.view(-1, 1)
    w1 = torch.ones(width, 1)
    w2 = torch.full((1, width), 1.0 / width)
    args = (activation, False, 1e-6, True)
    _, _, _, g_hat, _ = ops.mlp_fwd(x, w1, None, w2, None, torch.zeros(1), *args)
    a = []
    for xi in x:
        xi = xi.view(1, 1)
        _, zi, ai, gi, ri = ops.mlp_fwd(xi, w1, None, w2, None, torch.zeros(1), *args)
        w2_bar = ops.mlp_bwd(torch.ones(1, 1), xi, w1, None, w2, torch.zeros(1), zi, ai, gi, ri,
                             *args)[3]
        a.append(w2_bar)
    return torch.cat(a), g_hat.view(-1)


def _assert_float32_accurate(got, z, fn, what):
    """|got − fn(z)| (fn in float64) within 8 float32 ulps of the true value, or within 4× the error
    of torch's own float32 evaluation where that cancels (gelu_tanh's 1 + tanh(u) for u ≪ 0), with
    1e-37 of slack for results in the subnormal range (which the kernels flush)."""
    want = fn(z.double())
    torch_err = (fn(z.float()).double() - want).abs()
    tol = torch.maximum(8 * torch.finfo(torch.float32).eps * want.abs(), 4 * torch_err) + 1e-37
    err = (got.double() - want).abs()
    bad = ~(err <= tol)
    assert not bad.any(), (f"{what}: z={z[bad].tolist()} got={got[bad].tolist()} "
                           f"want={want[bad].tolist()}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cpu_vector_math_matches_the_activation_table(activation):
    """The float32 CPU kernels' φ (forward and backward) and φ' (vector exp/tanh/erf of
    csrc/cpu_math.h) against the table's float64 values across the tails, and NaN/±inf
    propagated as torch does."""
    act = gf.get_activation(activation)
    z = torch.tensor(_EXTREME_Z)
    if activation == "sin":  # libm sin/cos: keep to arguments a float32 can resolve
        z = z[z.abs() <= 100]
    a, d = _phi_and_dphi_from_the_fused_ops(z, activation)
    for lane in range(a.shape[1]):
        _assert_float32_accurate(a[:, lane], z, act.fn, f"{activation} φ lane {lane}")
    _assert_float32_accurate(d, z, act.d1, f"{activation} φ'")
    special = torch.tensor([float("nan"), float("inf"), float("-inf")])
    a, d = _phi_and_dphi_from_the_fused_ops(special, activation)
    want = act.fn(special).unsqueeze(1).expand_as(a)
    torch.testing.assert_close(a, want, equal_nan=True)
    torch.testing.assert_close(d[:1], act.d1(special[:1]), equal_nan=True)  # φ'(NaN)


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
def test_third_order_through_fused_backward(detach):
    """∂/∂x of a double backward: the fused backward's own backward (composite VJP) is itself
    differentiable, so the third derivative matches the composite backend's."""
    base = mlp_inputs(3, 4, 5)

    def third(backend):
        x, w1, b1, w2, b2, alpha = [t.detach().requires_grad_() for t in base]
        y = gf.gradres_mlp(x, w1, b1, w2, b2, alpha, activation="tanh", detach=detach,
                           backend=backend)
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad((gx * gx).sum(), w1, create_graph=True)
        return torch.autograd.grad(gw.sum(), [x, w2, alpha])

    for a, b in zip(third("cpp"), third("composite")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_torch_compile_fullgraph_traces_the_ops():
    model = torch.nn.Sequential(gf.GradResMLP(6, 8, activation="silu", backend="cpp"),
                                gf.GradResMLP(6, 8, detach=False, backend="cpp"))
    assert_compiled_matches_eager(model, torch.randn(5, 6))


def test_compiled_conv_blocks_take_the_layout_inductor_chooses():
    """The ops are tagged flexible_layout (csrc/ops.cpp): Inductor, which runs a CPU graph with
    convolutions channels_last, hands a contiguous model's conv blocks channels_last tensors
    instead of transposing them around each op; the compiled model matches eager."""
    for name in ("mlp_fwd", "mlp_bwd", "conv_fwd", "conv_bwd"):
        assert torch.Tag.flexible_layout in getattr(ops, name).default.tags, name
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        gf.GradResConv2d(6, 4, activation="silu", alpha_init=0.3, backend="cpp"),
        gf.GradResConv2d(6, 4, activation="tanh", alpha_init=-0.2, detach=False, backend="cpp"),
        torch.nn.Conv2d(6, 3, 3, padding=1))
    assert_compiled_matches_eager(model, torch.randn(2, 3, 9, 7))


# ---- CUDA (skipped without a GPU and a CUDA build) ------------------------------------------------


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_cuda_parity(family, activation, detach, dtype):
    """CUDA kernels against the CPU float64 reference, at sizes that exercise the vector paths,
    warp-per-row and block-per-row reductions and several column chunks."""
    if family == "mlp":
        base, op = mlp_inputs(1031, 64, 96), gf.gradres_mlp
    else:
        base, op = conv_inputs(3, 16, 24, 17, 13), gf.gradres_conv2d
    fn = functools.partial(op, activation=activation, detach=detach)
    proj = torch.randn(base[0].shape, dtype=torch.float64)
    want, _ = outputs_and_grads(functools.partial(fn, backend="reference"), base, proj)
    got, n = outputs_and_grads(functools.partial(fn, backend="cpp"), leaves(base, "cuda", dtype),
                               proj.to("cuda", dtype))
    baseline, _ = outputs_and_grads(functools.partial(fn, backend="reference"),
                                    leaves(base, "cuda", dtype), proj.to("cuda", dtype))
    got = [g.cpu() for g in got]
    baseline = [g.cpu() for g in baseline]
    assert_parity(got, want, dtype, baseline if dtype != torch.float64 else None, n)
