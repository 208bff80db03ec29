"""What autograd keeps for the backward of a `cpp` block (docs/DESIGN.md §2, "Memory"): x, one
hidden-sized tensor (a = φ(z) for relu, z for the other activations; not the forward's
one-element placeholder for the other), ĝ and r, besides the parameters — counted in bytes of distinct storages, as bench's `saved_mb` does. Deterministic:
sizes, not timings."""
import pytest
import torch

import gradres_fused as gf
from gradres_fused import cpp
from conftest import ACTIVATIONS, conv_inputs, mlp_inputs

pytestmark = pytest.mark.skipif(cpp.IMPORT_ERROR is not None,
                                reason=f"cpp backend not built: {cpp.IMPORT_ERROR}")
ops = torch.ops.gradres_fused


def saved_storages(fn):
    """{data pointer: bytes} of the storages autograd saves while fn() runs."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def _inputs(family, dtype, bias):
    if family == "mlp":  # N, D, H all different, so a mix-up of sizes shows
        return mlp_inputs(37, 5, 11, dtype=dtype, bias=bias)
    return conv_inputs(3, 4, 6, 7, 5, dtype=dtype, bias=bias)


def _nbytes(t):
    return t.numel() * t.element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_cpp_block_keeps_x_one_hidden_tensor_g_hat_and_r(family, activation, detach, dtype):
    for bias, normalize in ((True, True), (False, False)):
        x, w1, b1, w2, b2, alpha = _inputs(family, dtype, bias)
        fn = gf.gradres_mlp if family == "mlp" else gf.gradres_conv2d
        got = saved_storages(lambda: fn(x, w1, b1, w2, b2, alpha, activation=activation,
                                        normalize=normalize, detach=detach, backend="cpp"))
        n = x.shape[0]
        hidden = x.numel() // x.shape[1] * w1.shape[0]  # N·H, or N·Cm·H·W
        acc_bytes = torch.finfo(cpp.fused_op.norm_dtype(dtype)).bits // 8
        want = {
            "x": _nbytes(x), "hidden": hidden * x.element_size(), "g_hat": _nbytes(x),
            "r": n * acc_bytes if normalize else 0,
            "params": sum(_nbytes(p) for p in (w1, b1, w2, alpha) if p is not None),
        }
        assert sum(got.values()) == sum(want.values()), (got, want)
        # at most one hidden-sized storage, and no x-sized ones but x and ĝ
        assert sorted(got.values(), reverse=True)[:3] == sorted(
            [want["x"], want["hidden"], want["g_hat"]], reverse=True)


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_cpp_keeps_no_more_than_composite(family, activation, detach):
    """The issue's bar: cpp's saved bytes ≤ the composite backend's (x, one hidden-sized
    tensor, ĝ, r)."""
    x, w1, b1, w2, b2, alpha = _inputs(family, torch.float32, True)
    fn = gf.gradres_mlp if family == "mlp" else gf.gradres_conv2d
    kept = {backend: sum(saved_storages(lambda: fn(x, w1, b1, w2, b2, alpha,
                                                    activation=activation, detach=detach,
                                                    backend=backend)).values())
            for backend in ("cpp", "composite")}
    assert kept["cpp"] <= kept["composite"], kept


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fake_kernels_say_which_tensor_the_activation_keeps(activation):
    """cpp.SAVES_OUTPUT (what the fake kernels report) agrees with csrc/activations.h's
    kSavesOutput (what the kernels return), for each activation and both families."""
    for family in ("mlp", "conv"):
        x, w1, b1, w2, b2, alpha = [t.detach() for t in _inputs(family, torch.float64, True)]
        args = (x, w1, b1, w2, b2, alpha.reshape(1), activation, True, 1e-6, True)
        fwd = getattr(ops, f"{family}_fwd")
        _, z, a, _, _ = fwd(*args)
        keeps_a = activation in cpp.SAVES_OUTPUT
        assert (z.numel() == 1) == keeps_a and (a.numel() == 1) != keeps_a, (z.shape, a.shape)
        torch.library.opcheck(fwd, args, test_utils=("test_schema", "test_faketensor"))
