"""Shared test helpers: fresh random inputs per run (seed printed, GRADRES_TEST_SEED to replay),
input builders for both block families and the docs/DESIGN.md §6 tolerances."""
from __future__ import annotations

import functools
import os
import random
import shlex
import zlib

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors (docs/DESIGN.md §5). It must be
# on before gradres_fused (and so gradres_fused.kernels) is imported; GRADRES_TRITON_INTERPRET=0
# leaves it off (then the triton backend is absent on CPU and its tests skip).
if not torch.cuda.is_available() and os.environ.get("GRADRES_TRITON_INTERPRET", "1") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import gradres_fused as gf  # noqa: E402

SEED = int(os.environ.get("GRADRES_TEST_SEED", random.SystemRandom().randrange(2**31)))
ACTIVATIONS = sorted(gf.ACTIVATIONS)
PARAM_NAMES = ("x", "w1", "b1", "w2", "b2", "alpha")


def pytest_configure(config):
    """A pytest-xdist worker imports this file on its own and would draw its own seed: it takes
    the controller's instead (sent by pytest_configure_node), before any test module reads SEED."""
    global SEED
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "gradres_test_seed" in workerinput:
        SEED = workerinput["gradres_test_seed"]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist, on the controller: hand every worker the controller's seed."""
    node.workerinput["gradres_test_seed"] = SEED


def replay_command(config) -> str:
    """The command line that reruns this session with the same seed."""
    args = " ".join(shlex.quote(a) for a in config.invocation_params.args)
    return f"GRADRES_TEST_SEED={SEED} python -m pytest {args}".rstrip()


def pytest_report_header(config):
    return f"gradres_fused test seed: {SEED} (replay with GRADRES_TEST_SEED={SEED})"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The seed again at the end, where `-q` (which drops the header) still shows it."""
    terminalreporter.write_line(
        f"gradres_fused test seed: {SEED}; replay: {replay_command(config)}")


@pytest.fixture(autouse=True)
def _seed(request):
    """A fresh seed every run, derived per test so each test is replayable on its own."""
    torch.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def mlp_inputs(n, dim, hidden, dtype=torch.float64, bias=True, device="cpu", scale=1.0):
    """x (n, dim), w1 (hidden, dim), b1, w2 (dim, hidden), b2, alpha, all requiring grad."""
    def t(*shape, s=1.0):
        return (torch.randn(shape, dtype=dtype, device=device) * s).requires_grad_()
    return (t(n, dim), t(hidden, dim, s=scale / dim ** 0.5), t(hidden) if bias else None,
            t(dim, hidden, s=scale / hidden ** 0.5), t(dim) if bias else None, t(s=0.5))


def conv_inputs(n, c, cm, h, w, k1=3, k2=3, dtype=torch.float64, bias=True, device="cpu"):
    """x (n, c, h, w), w1 (cm, c, k1, k1), b1, w2 (c, cm, k2, k2), b2, alpha, all requiring grad."""
    def t(*shape, s=1.0):
        return (torch.randn(shape, dtype=dtype, device=device) * s).requires_grad_()
    return (t(n, c, h, w), t(cm, c, k1, k1, s=(c * k1 * k1) ** -0.5), t(cm) if bias else None,
            t(c, cm, k2, k2, s=(cm * k2 * k2) ** -0.5), t(c) if bias else None, t(s=0.5))


def outputs_and_grads(fn, inputs, proj, second_order=False):
    """y = fn(*inputs) and the gradients of Σ y·proj w.r.t. every input that requires grad.

    With second_order, also the gradients of a gradient penalty Σ‖∂L/∂θ‖² (double backward).
    Pass the same `proj` (shaped like y, i.e. like x) to the runs you compare."""
    y = fn(*inputs)
    wrt = [t for t in inputs if t is not None]
    grads = torch.autograd.grad((y * proj).sum(), wrt, create_graph=second_order,
                                allow_unused=True)
    out = [y.detach()] + [g.detach() for g in grads if g is not None]
    out_first = len(out)
    if second_order:
        penalty = sum((g * g).sum() for g in grads if g is not None)
        gg = torch.autograd.grad(penalty, wrt, allow_unused=True)
        out += [g for g in gg if g is not None]
    return out, out_first


def leaves(inputs, device=None, dtype=None):
    """Fresh leaf copies requiring grad (None stays None), optionally moved/cast."""
    return [None if t is None else t.detach().to(device or t.device, dtype or t.dtype)
            .requires_grad_() for t in inputs]


def one_wide_normalized(op, inputs, options) -> bool:
    """An MLP whose rows or hidden layer are 1 wide, normalized, in second-order mode: ĝ is then
    ±(a fixed direction), its derivative is ~eps²/|g|³, and float32 leaves only rounding noise
    where the exact second-order terms are ~0 — an ill-posed low-precision comparison."""
    if op is not gf.gradres_mlp or not options.get("normalize", True) or options.get("detach"):
        return False
    dim, hidden = inputs[0].shape[-1], inputs[1].shape[0]
    return dim == 1 or hidden == 1


def compare_with_reference(op, backend, inputs, dtype, **options):
    """`backend` on `inputs` (any device) in `dtype` against the reference in float64 on CPU on
    the same values (and, for the conditioning allowance of assert_parity, the reference in
    `dtype` on the same device), y + first-order gradients + double backward. The one-wide
    normalized second-order MLP is compared in float64 whatever `dtype` says."""
    if dtype != torch.float64 and one_wide_normalized(op, inputs, options):
        inputs, dtype = leaves(inputs, dtype=torch.float64), torch.float64
    device = inputs[0].device
    fn = functools.partial(op, backend=backend, **options)
    ref = functools.partial(op, backend="reference", **options)
    proj = torch.randn(inputs[0].shape, dtype=torch.float64)
    want, _ = outputs_and_grads(ref, leaves(inputs, "cpu", torch.float64), proj, True)
    got, first_order = outputs_and_grads(fn, inputs, proj.to(device, dtype), True)
    baseline = None
    if dtype != torch.float64:
        baseline, _ = outputs_and_grads(ref, inputs, proj.to(device, dtype), True)
        baseline = [b.cpu() for b in baseline]
    assert_parity([g.cpu() for g in got], want, dtype, baseline, first_order,
                  alpha_scale(ref, inputs, proj))


def alpha_scale(ref, inputs, proj) -> float | None:
    """Σ|ȳ ⊙ ∂y/∂α| in float64: the size of the terms that ᾱ = Σ ȳ ⊙ ∂y/∂α adds up, which bounds
    its rounding error however much they cancel (None when alpha does not require grad).

    y = F(x) + (1−m)·x + m·ĝ is affine in m = sigmoid(α) and ĝ does not depend on α, so two
    forward passes give ∂y/∂α = m(1−m)·(ĝ − x) exactly: (y(α) − y(α+1)) / (m(α) − m(α+1))."""
    if inputs[-1] is None or not inputs[-1].requires_grad:
        return None
    x = leaves(inputs, "cpu", torch.float64)
    with torch.no_grad():
        a, a1 = x[-1], x[-1] + 1
        m, m1 = torch.sigmoid(a), torch.sigmoid(a1)
        dy = m * (1 - m) * (ref(*x[:-1], a) - ref(*x[:-1], a1)) / (m - m1)
        return (proj.cpu().double() * dy).abs().sum().item()


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def assert_parity(got, want, dtype, baseline=None, first_order=None, alpha_scale=None):
    """docs/DESIGN.md §6 tolerances, output by output (`first_order`: how many leading outputs are y and
    first-order gradients; the rest are double-backward outputs; default all first-order).

    float64: max abs error ≤ 1e-9·max(1, max|ref|): absolute for outputs of magnitude ≤ 1, relative
    to the output's scale above (a one-wide normalized MLP's x̄ reaches ~1e3, where 1e-9 absolute
    asks for 1e-12 relative, finer than a different summation order keeps).
    Lower precision: ‖got − want‖/‖want‖ ≤ 1e-5 (float32) or 3e-3 (float16/bfloat16), `want`
    being the reference in higher precision. Some outputs are ill-conditioned in low precision:
    an output of a few elements (≤ 8: the bias or weight of a 1-wide layer) is a handful of full
    reductions that may cancel (10× the tolerance), a one-element output (ᾱ) is one such sum
    (100×: its relative error grows with the cancellation, seen up to 1.4e-4 in float32 on
    correct code); ĝ of a 1-wide row is nearly sign(g); a double backward is a third derivative
    (1e-3 in float32). Every one of these is checked to 1e-9 in float64 above. `baseline`, the reference run in `dtype` itself, measures the
    conditioning: an output may always be off by 4× the reference's own error in that precision.
    `alpha_scale` (see alpha_scale()): ᾱ, output first_order − 1, may also be off by
    16·eps·Σ|its terms| in absolute terms — a sum of terms of ~1 that cancels to 1e-5 keeps only the
    leading digits in float32 whatever the summation order (seen: 9e-3 relative, 0.2·eps·Σ|terms|,
    on a 1×2×3×5 conv block, where the float32 reference was luckily 1e-3 off).
    """
    assert len(got) == len(want)
    first_order = len(got) if first_order is None else first_order
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"output {i}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if not a.numel():
            continue
        if dtype == torch.float64:
            err = (a - b).abs().max().item()
            tol = 1e-9 * max(1.0, b.abs().max().item())
            assert err <= tol, f"output {i}: max abs error {err:.3e} > {tol:.1e}"
            continue
        tol = 1e-5 if dtype == torch.float32 else 3e-3
        if i >= first_order:
            tol = max(tol, 1e-3)
        if a.numel() <= 8:
            tol *= 100 if a.numel() == 1 else 10
        if baseline is not None:
            tol = max(tol, 4 * _rel(baseline[i], b))
        if alpha_scale is not None and i == first_order - 1:
            tol = max(tol, 16 * torch.finfo(dtype).eps * alpha_scale
                      / b.double().norm().clamp_min(1e-30).item())
        rel = _rel(a, b)
        assert rel <= tol, f"output {i}: relative error {rel:.3e} > {tol:.3e}"


def assert_compiled_matches_eager(model, x, steps=1, compile_backend="inductor", rtol=1e-5,
                                  atol=1e-6):
    """torch.compile(model, fullgraph=True) matches eager in outputs and parameter gradients
    (float32 tolerance) over `steps` SGD steps applied to both copies alike."""
    import copy

    torch._dynamo.reset()
    eager = model
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True, backend=compile_backend)
    for _ in range(steps):
        y_eager, y_comp = eager(x), compiled(x)
        torch.testing.assert_close(y_comp, y_eager, rtol=rtol, atol=atol)
        g_eager = torch.autograd.grad(y_eager.square().mean(), list(eager.parameters()))
        g_comp = torch.autograd.grad(y_comp.square().mean(), list(twin.parameters()))
        for a, b in zip(g_comp, g_eager):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        with torch.no_grad():
            for p, q, g, h in zip(eager.parameters(), twin.parameters(), g_eager, g_comp):
                p -= 0.1 * g
                q -= 0.1 * h


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true",
                     help="long fuzz profile: 500 hypothesis examples per backend (default 30)")
