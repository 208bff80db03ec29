"""What a block keeps from its forward for its backward (issue #35): the `triton` ops save no more
than `composite` does — x, one hidden-sized tensor, ĝ and r per block (besides the parameters) —
counted with saved-tensor hooks on the interpreter (CPU), deterministic byte counts."""
import pytest
import torch

import gradres_fused as gf
from gradres_fused import triton_backend

from conftest import conv_inputs, mlp_inputs

pytestmark = pytest.mark.skipif(not triton_backend.interpreted(),
                                reason="the triton ops run on CPU only under the interpreter")

# 1-element placeholders of the saved tuple (fused path) and the (1,) alpha: a few bytes each.
SLACK = 64


def _saved_bytes(fn, inputs, **options):
    """Bytes of the distinct tensors autograd keeps for the backward that are not the op's own
    inputs (x and the parameters are the caller's, alive anyway)."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None
              for t in inputs]
    own = {t.untyped_storage().data_ptr() for t in leaves if t is not None}
    kept = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            kept[ptr] = max(kept.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves, **options)
    return sum(kept.values())


def _budget(x, hidden_numel, normalize):
    """ĝ (x's size), one hidden-sized tensor, r (float32 or float64 per sample)."""
    r = x.shape[0] * (8 if x.dtype == torch.float64 else 4) if normalize else 0
    return x.numel() * x.element_size() * 2 + hidden_numel * x.element_size() + r


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("path", ["fused", "tiled"])
def test_triton_mlp_saves_one_hidden_tensor(monkeypatch, path, detach):
    monkeypatch.setenv(triton_backend.PATH_VAR, path)
    inputs = mlp_inputs(37, 20, 48, dtype=torch.float32)
    x = inputs[0]
    options = dict(activation="gelu", detach=detach, normalize=True)
    got = _saved_bytes(gf.gradres_mlp, inputs, backend="triton", **options)
    composite = _saved_bytes(gf.gradres_mlp, inputs, backend="composite", **options)
    budget = _budget(x, x.shape[0] * 48, True)
    assert got <= budget + SLACK, (got, budget)
    assert got <= composite + SLACK, (got, composite)
    if path == "fused":  # recomputes everything from x: only placeholders
        assert got <= SLACK


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
def test_triton_conv_saves_one_hidden_tensor(detach):
    inputs = conv_inputs(3, 4, 6, 5, 7, dtype=torch.float32)
    x = inputs[0]
    options = dict(activation="silu", detach=detach, normalize=True)
    got = _saved_bytes(gf.gradres_conv2d, inputs, backend="triton", **options)
    composite = _saved_bytes(gf.gradres_conv2d, inputs, backend="composite", **options)
    budget = _budget(x, 3 * 6 * 5 * 7, True)
    assert got <= budget + SLACK, (got, budget)
    assert got <= composite + SLACK, (got, composite)
