"""Built-in workloads: each builds, on a device, the tensors to differentiate and a
forward for every peer, all sharing the same weights and inputs.

Shapes come in three tiers: `gpu` (the sizes the project reports), `cpu` (the default on a CPU,
scaled so a full run takes minutes on 2 cores; the scaling is written into every row's shape) and
`quick` (seconds; CI smoke).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gradres_fused as gf


@dataclass
class Case:
    """What one (workload, dtype, activation, mode) measurement needs."""

    params: List[Tensor]                 # everything the training step differentiates
    forward: Callable[[str], Callable[[], Tensor]]   # peer backend name -> zero-arg forward
    proj: Tensor                         # fixed upstream gradient, shaped like the output
    unit_flops: Optional[float]          # FLOPs of one GEMM unit (2·N·D·H); None: no roofline
    min_bytes: float                     # compulsory memory traffic of a fused training step


def step_units(peer: str, detach: bool) -> float:
    """GEMM (or conv) units of one training step, docs/DESIGN.md §2: plain 6, detach 7, second order 9."""
    return 6.0 if peer == "plain" else (7.0 if detach else 9.0)


def _t(shape, dtype, device, scale=1.0) -> Tensor:
    return (torch.randn(shape, dtype=dtype, device=device) * scale).requires_grad_()


def _mlp_case(shape, dtype, device, activation, detach) -> Case:
    n, d, h = shape
    x = _t((n, d), dtype, device)
    w1, b1 = _t((h, d), dtype, device, d ** -0.5), _t((h,), dtype, device)
    w2, b2 = _t((d, h), dtype, device, h ** -0.5), _t((d,), dtype, device)
    alpha = _t((1,), dtype, device, 0.0)
    params = [x, w1, b1, w2, b2, alpha]
    act = gf.get_activation(activation).fn

    def forward(peer: str):
        if peer == "plain":
            return lambda: F.linear(act(F.linear(x, w1, b1)), w2, b2) + x
        return lambda: gf.gradres_mlp(x, w1, b1, w2, b2, alpha, activation=activation,
                                      detach=detach, backend=peer)
    elt = x.element_size()
    # fused ideal: fwd reads x, writes y; bwd reads x, ȳ, writes x̄; weights are negligible here.
    return Case(params, forward, torch.randn_like(x), 2.0 * n * d * h,
                5.0 * n * d * elt + 4.0 * d * h * elt)


def _conv_case(shape, dtype, device, activation, detach) -> Case:
    n, c, cm, hh, ww, k = shape
    x = _t((n, c, hh, ww), dtype, device)
    w1, b1 = _t((cm, c, k, k), dtype, device, (c * k * k) ** -0.5), _t((cm,), dtype, device)
    w2, b2 = _t((c, cm, k, k), dtype, device, (cm * k * k) ** -0.5), _t((c,), dtype, device)
    alpha = _t((1,), dtype, device, 0.0)
    params = [x, w1, b1, w2, b2, alpha]
    act = gf.get_activation(activation).fn
    p = k // 2

    def forward(peer: str):
        if peer == "plain":
            return lambda: F.conv2d(act(F.conv2d(x, w1, b1, padding=p)), w2, b2, padding=p) + x
        return lambda: gf.gradres_conv2d(x, w1, b1, w2, b2, alpha, activation=activation,
                                         detach=detach, backend=peer)
    elt = x.element_size()
    return Case(params, forward, torch.randn_like(x), 2.0 * n * hh * ww * c * cm * k * k,
                5.0 * x.numel() * elt + 2.0 * n * cm * hh * ww * elt)


# Activation modules for the blocks GradientResidual recognizes (gradres_fused/wrapping.py).
_ACT_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
                "silu": nn.SiLU, "tanh": nn.Tanh}


class EDSR(nn.Module):
    """EDSR-baseline: head conv, `blocks` conv–φ–conv residual blocks, body conv, ×scale
    pixel-shuffle upsampler, tail conv. Every block is a GradResConv2d — or, `wrapped`, a
    GradientResidual around nn.Sequential(Conv2d, act, Conv2d), the block a user's existing model
    has (same weights: the layers are made in the same order) — whose `backend` the benchmark sets
    per peer; peer "plain" runs the same weights as F(x) + x."""

    def __init__(self, blocks=16, channels=64, scale=2, activation="relu", detach=True,
                 res_scale=1.0, device=None, dtype=None, wrapped=False):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.head = nn.Conv2d(3, channels, 3, padding=1, **kw)
        if wrapped and activation not in _ACT_MODULES:
            raise ValueError(f"activation: GradientResidual recognizes {sorted(_ACT_MODULES)} "
                             f"as modules, got {activation!r}")

        def block():
            if not wrapped:
                return gf.GradResConv2d(channels, activation=activation, res_scale=res_scale,
                                        detach=detach, **kw)
            body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, **kw),
                                 _ACT_MODULES[activation](),
                                 nn.Conv2d(channels, channels, 3, padding=1, **kw))
            return gf.GradientResidual(body, scale=res_scale, detach=detach)
        self.body = nn.ModuleList(block() for _ in range(blocks))
        self.body_tail = nn.Conv2d(channels, channels, 3, padding=1, **kw)
        self.up = nn.Conv2d(channels, channels * scale * scale, 3, padding=1, **kw)
        self.shuffle = nn.PixelShuffle(scale)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1, **kw)
        self.activation, self.res_scale, self.peer = activation, res_scale, "plain"

    def _block(self, blk: nn.Module, x: Tensor) -> Tensor:
        if self.peer != "plain":
            blk.backend = self.peer
            return blk(x)
        conv1, conv2 = ((blk.module[0], blk.module[2]) if isinstance(blk, gf.GradientResidual)
                        else (blk.conv1, blk.conv2))
        act = gf.get_activation(self.activation).fn
        return conv2(act(conv1(x))) * self.res_scale + x

    def forward(self, x: Tensor) -> Tensor:
        h = self.head(x)
        r = h
        for blk in self.body:
            r = self._block(blk, r)
        h = self.body_tail(r) + h
        return self.tail(self.shuffle(self.up(h)))


def _edsr_case(shape, dtype, device, activation, detach, channels_last=False,
               wrapped=False) -> Case:
    n, blocks, ch, hh, ww = shape
    model = EDSR(blocks, ch, 2, activation, detach, device=device, dtype=dtype, wrapped=wrapped)
    lr = torch.randn(n, 3, hh, ww, dtype=dtype, device=device)
    if channels_last:  # weights and input: every peer, plain included, runs channels_last
        model = model.to(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)
    params = list(model.parameters())

    def forward(peer: str):
        def run():
            model.peer = peer
            return model(lr)
        return run
    # A whole model is not one roofline: no unit count.
    return Case(params, forward, torch.randn(n, 3, 2 * hh, 2 * ww, dtype=dtype, device=device),
                None, 0.0)


@dataclass(frozen=True)
class Workload:
    name: str
    build: Callable
    shapes: Dict[str, Tuple[int, ...]]   # tier -> shape
    shape_names: str

    def case(self, tier: str, dtype, device, activation: str, detach: bool) -> Case:
        return self.build(self.shapes[tier], dtype, device, activation, detach)

    def describe(self, tier: str) -> str:
        return f"{self.shape_names}=" + "x".join(map(str, self.shapes[tier]))


WORKLOADS: Dict[str, Workload] = {w.name: w for w in (
    Workload("mlp_narrow", _mlp_case,
             {"gpu": (65536, 64, 64), "cpu": (65536, 64, 64), "quick": (4096, 64, 64)}, "NxDxH"),
    Workload("mlp_wide", _mlp_case,
             {"gpu": (16384, 1024, 4096), "cpu": (1024, 1024, 4096), "quick": (256, 256, 512)},
             "NxDxH"),
    Workload("edsr_block", _conv_case,
             {"gpu": (16, 64, 64, 48, 48, 3), "cpu": (4, 64, 64, 48, 48, 3),
              "quick": (2, 16, 16, 24, 24, 3)}, "NxCxCmxHxWxk"),
    Workload("edsr_model", _edsr_case,
             {"gpu": (16, 16, 64, 48, 48), "cpu": (2, 16, 64, 32, 32),
              "quick": (1, 2, 16, 16, 16)}, "NxBlocksxCxHxW"),
    # The same model channels_last (model and input, every peer): which layout is faster is the
    # CPU's matter (oneDNN's channels_last kernels won on an AVX-512 EPYC, lost on an AVX2 one).
    Workload("edsr_model_cl", functools.partial(_edsr_case, channels_last=True),
             {"gpu": (16, 16, 64, 48, 48), "cpu": (2, 16, 64, 32, 32),
              "quick": (1, 2, 16, 16, 16)}, "NxBlocksxCxHxW"),
    # edsr_model with every block a user's nn.Sequential(Conv2d, act, Conv2d) wrapped in
    # GradientResidual (recognized: the fused op on the Sequential's own weights; peer
    # `reference`: the reference math, which is what GradientResidual ran before it recognized
    # blocks). Same weights and plain baseline as edsr_model: its rows beside edsr_model's give
    # the wrapper's cost (target ≤ 1.05× the GradResConv2d model's step).
    Workload("edsr_model_wrapped", functools.partial(_edsr_case, wrapped=True),
             {"gpu": (16, 16, 64, 48, 48), "cpu": (2, 16, 64, 32, 32),
              "quick": (1, 2, 16, 16, 16)}, "NxBlocksxCxHxW"),
)}
