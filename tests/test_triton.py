"""The `triton` backend beyond the shared parity/gradcheck suites (which run it on the fused MLP
path and the conv kernels; without a GPU under TRITON_INTERPRET=1): the tiled wide-MLP path on
awkward shapes, the fused path at its width limit and across persistent programs, the kernel
activation table, path selection, opcheck, torch.compile, availability rules, and — on a GPU — the
same parity at real sizes in float32/bfloat16/float16."""
import os
import subprocess
import sys

import pytest
import torch

import gradres_fused as gf
from gradres_fused import triton_backend
from gradres_fused.backends import get_backend
from conftest import (ACTIVATIONS, assert_compiled_matches_eager, compare_with_reference,
                      conv_inputs, leaves, mlp_inputs, one_wide_normalized)

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from gradres_fused.kernels.activations import (CODES, act_d1, act_d2, act_fn,  # noqa: E402
                                               activation_constexprs)

pytestmark = pytest.mark.skipif(
    "triton" not in gf.available_backends(),
    reason=f"triton backend unavailable: {triton_backend.unavailable(torch.device('cpu'), torch.float32)}")
ops = torch.ops.gradres_fused
MODES = [pytest.param(True, id="detach"), pytest.param(False, id="second_order")]
NORMALIZE = [pytest.param(True, id="norm"), pytest.param(False, id="raw")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _compare(op, inputs, dtype, **options):
    """triton on DEVICE against the reference (conftest.compare_with_reference). Float64 Triton
    kernels exist only in the interpreter: on a GPU a float64 check runs in float32, and a case
    that is well posed only in float64 (one-wide, normalized, second order) is skipped there."""
    if DEVICE == "cuda":
        dtype = torch.float32 if dtype == torch.float64 else dtype
        if one_wide_normalized(op, inputs, options):
            pytest.skip("one-wide normalized second order: compared in float64 (interpreter only)")
    compare_with_reference(op, "triton", leaves(inputs, DEVICE, dtype), dtype, **options)


@pytest.fixture
def tiled(monkeypatch):
    monkeypatch.setenv(triton_backend.PATH_VAR, "tiled")


# (N, D, H): batch 1, D or H of 1, nothing a multiple of the 16-wide interpreter tiles.
TILED_SHAPES = [(37, 21, 19), (1, 17, 33), (23, 1, 18), (19, 20, 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
def test_tiled_mlp_parity(tiled, shape, activation, detach, normalize, dtype):
    _compare(gf.gradres_mlp, mlp_inputs(*shape, dtype=dtype), dtype, activation=activation,
             detach=detach, normalize=normalize)


@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("shape", [(70, 128, 128), (130, 100, 33), (50, 128, 1)], ids=str)
def test_fused_mlp_at_width_limit_and_many_tiles(shape, detach):
    """D, H up to MAX_WIDTH, and N over several BLOCK_M tiles per persistent program."""
    assert triton_backend.mlp_path(*shape[1:]) == "fused"
    _compare(gf.gradres_mlp, mlp_inputs(*shape), torch.float64, activation="gelu_tanh",
             detach=detach)


def test_tiled_no_bias_and_empty_batch(tiled):
    _compare(gf.gradres_mlp, mlp_inputs(9, 18, 20, bias=False), torch.float64, detach=False)
    x, w1, b1, w2, b2, alpha = leaves(mlp_inputs(0, 18, 20, dtype=torch.float32), DEVICE)
    y = gf.gradres_mlp(x, w1, b1, w2, b2, alpha, backend="triton", detach=False)
    assert y.shape == (0, 18)
    grads = torch.autograd.grad(y.sum(), (x, w1, b1, w2, b2, alpha))
    assert all(torch.all(g == 0) for g in grads[1:])


def test_path_selection(monkeypatch):
    assert triton_backend.mlp_path(128, 128) == "fused"
    assert triton_backend.mlp_path(129, 16) == "tiled"
    monkeypatch.setenv(triton_backend.PATH_VAR, "tiled")
    assert triton_backend.mlp_path(4, 4) == "tiled"
    monkeypatch.setenv(triton_backend.PATH_VAR, "fused")
    with pytest.raises(ValueError, match="D, H ≤ 128"):
        triton_backend.mlp_path(129, 4)
    monkeypatch.setenv(triton_backend.PATH_VAR, "fastest")
    with pytest.raises(ValueError, match=triton_backend.PATH_VAR):
        triton_backend.mlp_path(4, 4)


@pytest.mark.parametrize("first", ["fused", "tiled"])
def test_backward_takes_the_forward_path(monkeypatch, first):
    """The path is decided once, by the forward, and recorded in what it saves: changing
    GRADRES_TRITON_MLP between forward and backward does not change the backward's kernels."""
    from gradres_fused.kernels import gemm, mlp_fused

    other = {"fused": "tiled", "tiled": "fused"}[first]
    inputs = leaves(mlp_inputs(21, 12, 18, dtype=torch.float64), DEVICE)
    monkeypatch.setenv(triton_backend.PATH_VAR, first)
    y = gf.gradres_mlp(*inputs, backend="triton", activation="silu")
    monkeypatch.setenv(triton_backend.PATH_VAR, other)

    def wrong_path(*args, **kwargs):
        raise AssertionError(f"the backward ran the {other} kernels after a {first} forward")

    monkeypatch.setattr(gemm if other == "tiled" else mlp_fused, "mlp_bwd", wrong_path)
    proj = torch.randn_like(y)
    got = torch.autograd.grad((y * proj).sum(), inputs)
    ref_inputs = leaves(inputs)
    want = torch.autograd.grad((gf.gradres_mlp(*ref_inputs, backend="reference",
                                               activation="silu") * proj).sum(), ref_inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_kernel_constexprs_come_from_the_table():
    """Kernel activation codes cover exactly the table, and D2_ZERO is the table's d2_is_zero."""
    assert set(CODES) == set(gf.ACTIVATIONS)
    for name, entry in gf.ACTIVATIONS.items():
        assert activation_constexprs(name) == {"ACT": CODES[name], "D2_ZERO": entry.d2_is_zero}


@triton.jit
def _table_kernel(z_ptr, out_ptr, n, ACT: tl.constexpr, D2_ZERO: tl.constexpr,
                  BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    z = tl.load(z_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, act_fn(z, ACT), mask=mask)
    tl.store(out_ptr + n + offs, act_d1(z, ACT), mask=mask)
    if not D2_ZERO:  # as every kernel does: φ'' ≡ 0 has no kernel code
        tl.store(out_ptr + 2 * n + offs, act_d2(z, ACT), mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_kernel_activation_table(dtype):
    """Each kernel φ, φ', φ'' against gradres_fused.activations (the table), scaled abs error;
    where the table says φ'' ≡ 0 (d2_is_zero) the kernels have no φ'' and the table's is zero."""
    if dtype == torch.float64 and DEVICE == "cuda":
        pytest.skip("float64 kernels are an interpreter-only check")
    z = torch.cat([torch.randn(1000, dtype=dtype) * 3, torch.randn(24, dtype=dtype) * 1e-3,
                   torch.tensor([0.0, 0.1, -0.1, 30.0, -30.0], dtype=dtype)]).to(DEVICE)
    n = z.numel()
    out = torch.empty(3 * n, dtype=dtype, device=DEVICE)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name in CODES:
        out.zero_()
        _table_kernel[(1,)](z, out, n, **activation_constexprs(name),
                            BLOCK=triton.next_power_of_2(n))
        entry = gf.ACTIVATIONS[name]
        for k, fn in enumerate((entry.fn, entry.d1, entry.d2)):
            want = fn(z.double()).to(dtype)
            err = ((out[k * n:(k + 1) * n] - want).abs() / want.abs().clamp_min(1)).max().item()
            assert err <= tol, f"{name} order {k}: {err:.2e}"


@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("family,path", [("mlp", "fused"), ("mlp", "tiled"), ("conv", "auto")])
def test_opcheck(monkeypatch, family, path, detach, normalize):
    monkeypatch.setenv(triton_backend.PATH_VAR, path)
    if family == "mlp":
        x, w1, b1, w2, b2, alpha = leaves(mlp_inputs(5, 4, 3, dtype=torch.float32), DEVICE)
    else:
        x, w1, b1, w2, b2, alpha = leaves(conv_inputs(2, 2, 3, 5, 3, dtype=torch.float32), DEVICE)
    alpha = alpha.detach().reshape(1).requires_grad_()
    fwd = getattr(ops, f"triton_{family}_fwd")
    bwd = getattr(ops, f"triton_{family}_bwd")
    args = (x, w1, b1, w2, b2, alpha, "silu", normalize, 1e-6, detach)
    torch.library.opcheck(fwd, args)
    _, z, a, g_hat, r = fwd(*[None if t is None else t.detach() for t in args[:6]], *args[6:])
    tests = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic" if family == "mlp" else "test_aot_dispatch_static")
    torch.library.opcheck(bwd, (torch.randn_like(x).requires_grad_(), x, w1, b1, w2, alpha, z,
                                a, g_hat, r, "silu", normalize, 1e-6, detach), test_utils=tests)


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
def test_torch_compile_fullgraph(detach):
    model = torch.nn.Sequential(
        gf.GradResMLP(6, 10, activation="silu", detach=detach, backend="triton"),
        gf.GradResMLP(6, 10, activation="silu", detach=detach, backend="triton")).to(DEVICE)
    # Under the interpreter the Triton launches cannot be inductor-compiled around: aot_eager
    # still traces the whole graph (fullgraph) through the ops' fake kernels and autograd.
    assert_compiled_matches_eager(model, torch.randn(9, 6, device=DEVICE),
                                  compile_backend="inductor" if DEVICE == "cuda" else "aot_eager")


def test_auto_never_picks_the_interpreter():
    if DEVICE == "cuda":
        assert get_backend("auto", torch.device("cuda"), torch.float32).name == "triton"
    assert get_backend("auto", torch.device("cpu"), torch.float32).name != "triton"


def test_cpu_without_interpreter_says_why():
    """In a process without TRITON_INTERPRET, asking for triton on CPU raises with the reason."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch, gradres_fused as gf\n"
            "x = torch.randn(3, 4); w1 = torch.randn(5, 4); w2 = torch.randn(4, 5)\n"
            "try:\n    gf.gradres_mlp(x, w1, None, w2, None, 0.0, backend='triton')\n"
            "except RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


# ---- GPU: the same parity at real sizes, low precision included ---------------------------------
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case", ["mlp_fused", "mlp_tiled", "conv"])
def test_cuda_parity(monkeypatch, case, activation, detach, dtype):
    if case == "mlp_fused":
        base, op = mlp_inputs(1031, 64, 96), gf.gradres_mlp
    elif case == "mlp_tiled":
        base, op = mlp_inputs(517, 300, 200), gf.gradres_mlp
        monkeypatch.setenv(triton_backend.PATH_VAR, "tiled")
    else:
        base, op = conv_inputs(3, 16, 24, 17, 13), gf.gradres_conv2d
    _compare(op, base, dtype, activation=activation, detach=detach)


def test_autotune_pruning_glue():
    """GRADRES_AUTOTUNE=1's prune hooks read the launch's own arguments (as Triton passes them)
    and keep only candidates the policy allows for that shape and device."""
    from gradres_fused.kernels import gemm, mlp_fused, policy

    def triton_configs(kernel):
        return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                for c in policy.candidates(kernel)]

    a1 = torch.empty(1, dtype=torch.float16)
    kept = gemm._prune(triton_configs(policy.GEMM), {"a1_ptr": a1, "M": 20, "N": 300, "K1": 200})
    smallest = min(c.kwargs["BLOCK_M"] for c in policy.candidates(policy.GEMM))
    assert kept and all(c.kwargs["BLOCK_M"] == smallest for c in kept)  # 20 rows: one M tile
    for stage in ("mlp_fused_fwd", "mlp_fused_bwd"):
        kept = mlp_fused._prune(stage)(triton_configs(stage),
                                       {"x_ptr": torch.empty(1), "D": 128, "H": 100})
        assert kept and len(kept) <= len(policy.candidates(stage))
