"""The blocks inside a training stack, single process: non-reentrant activation checkpointing,
torch.export and channels_last conv tensors, every CPU backend (Triton in its interpreter),
detach and second-order modes. (Data parallelism: test_distributed.py; torch.compile and AMP:
test_hardening.py.)"""
import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradres_fused as gf
from gradres_fused.backends import exportable_backends

BACKENDS = gf.available_backends("cpu")
MODES = [pytest.param(True, id="detach"), pytest.param(False, id="second_order")]


class ConvMLPNet(nn.Module):
    """A conv GradRes block on (N, 2, 3, 4), flattened into an MLP GradRes block."""

    def __init__(self, backend, detach, checkpointed=False):
        super().__init__()
        self.conv = gf.GradResConv2d(2, 3, activation="silu", alpha_init=0.3, res_scale=0.5,
                                     detach=detach, backend=backend)
        self.mlp = gf.GradResMLP(24, 7, activation="tanh", alpha_init=-0.2, detach=detach,
                                 backend=backend)
        self.checkpointed = checkpointed

    def forward(self, x):
        if self.checkpointed:
            h = checkpoint(self.conv, x, use_reentrant=False)
            return checkpoint(self.mlp, h.flatten(1), use_reentrant=False)
        return self.mlp(self.conv(x).flatten(1))


def _grads(model, x):
    """y, x̄ and every parameter's gradient of a loss that weights outputs unevenly."""
    x = x.detach().requires_grad_()
    y = model(x)
    proj = torch.linspace(-1, 2, y.numel()).reshape(y.shape)
    grads = torch.autograd.grad((y * proj).sum(), [x, *model.parameters()])
    return [y.detach(), *grads]


def _assert_all_close(got, want, rtol=1e-5, atol=1e-6):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"{i}: {m}")


# ---- activation checkpointing ---------------------------------------------------------------------
@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_checkpointing_gives_the_same_gradients(backend, detach):
    torch.manual_seed(0)
    plain = ConvMLPNet(backend, detach)
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointed = True
    x = torch.randn(3, 2, 3, 4)
    _assert_all_close(_grads(ckpt, x), _grads(plain, x))


# ---- torch.export -----------------------------------------------------------------------------------
EXPORTABLE = [b for b in BACKENDS if b in exportable_backends()]


@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("backend", EXPORTABLE)
def test_export_matches_eager(backend, detach):
    torch.manual_seed(0)
    model = ConvMLPNet(backend, detach)
    x = torch.randn(3, 2, 3, 4)
    exported = torch.export.export(model, (x,)).module()
    x2 = torch.randn(3, 2, 3, 4)  # the same batch size, other values
    for inp in (x, x2):
        torch.testing.assert_close(exported(inp), model(inp), rtol=1e-6, atol=1e-6)


def test_export_covers_the_compiled_backends():
    assert {"composite", "cpp"} & set(gf.available_backends("cpu")) <= set(EXPORTABLE)
    assert "reference" not in exportable_backends()


@pytest.mark.parametrize("make", [
    pytest.param(lambda: ConvMLPNet("reference", True), id="reference-backend"),
    pytest.param(lambda: nn.Sequential(gf.GradientResidual(nn.Linear(24, 24)), nn.Flatten()),
                 id="GradientResidual"),
])
def test_export_of_reference_math_raises_naming_the_exportable_backends(make):
    """torch.autograd.grad inside the forward cannot be exported; instead of PyTorch's internal
    'fake tensor in the constant's list' error, the message says what to use."""
    model = make()
    x = torch.randn(3, 2, 3, 4) if isinstance(model, ConvMLPNet) else torch.randn(3, 24)
    with pytest.raises(RuntimeError) as info:
        torch.export.export(model, (x,))
    msg = str(info.value)
    assert "cannot be exported" in msg and "composite" in msg, msg
    assert "lifted_tensor" not in msg
    model(x)  # eager still works after the refused export


# ---- channels_last ----------------------------------------------------------------------------------
# The cpp conv path's output memory format is not asserted here (it is its own item of work); its
# values and gradients are.
KEEPS_CHANNELS_LAST = ("reference", "composite")


@pytest.mark.parametrize("detach", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_gives_the_same_outputs_and_gradients(backend, detach):
    torch.manual_seed(0)
    block = gf.GradResConv2d(3, 5, activation="gelu", alpha_init=0.4, detach=detach,
                             backend=backend)
    block_cl = copy.deepcopy(block).to(memory_format=torch.channels_last)
    assert block_cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 5)
    x_cl = x.to(memory_format=torch.channels_last)
    got, want = _grads(block_cl, x_cl), _grads(block, x)
    _assert_all_close(got, want)
    if backend in KEEPS_CHANNELS_LAST:
        assert got[0].is_contiguous(memory_format=torch.channels_last)
