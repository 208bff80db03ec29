"""Built-in workloads: the block family, its shapes, and a `plain` peer F(x) + x of the same shape."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

import gradres_fused as gf


@dataclass(frozen=True)
class Workload:
    name: str
    family: str                      # "mlp" or "conv2d"
    shape: Tuple[int, ...]           # mlp: (N, D, H); conv2d: (N, C, Cm, H, W, k)
    quick_shape: Tuple[int, ...]

    def describe(self, quick: bool) -> str:
        return "x".join(map(str, self.quick_shape if quick else self.shape))

    def inputs(self, quick: bool, dtype, device):
        """x, w1, b1, w2, b2, alpha with leaf tensors requiring grad."""
        shape = self.quick_shape if quick else self.shape

        def t(*s, scale=1.0):
            return (torch.randn(*s, dtype=dtype, device=device) * scale).requires_grad_()
        if self.family == "mlp":
            n, d, h = shape
            return (t(n, d), t(h, d, scale=d ** -0.5), t(h), t(d, h, scale=h ** -0.5), t(d),
                    t(1, scale=0.0))
        n, c, cm, hh, ww, k = shape
        return (t(n, c, hh, ww), t(cm, c, k, k, scale=(c * k * k) ** -0.5), t(cm),
                t(c, cm, k, k, scale=(cm * k * k) ** -0.5), t(c), t(1, scale=0.0))

    def op(self) -> Callable:
        return gf.gradres_mlp if self.family == "mlp" else gf.gradres_conv2d

    def plain(self, activation: str) -> Callable:
        """The block without the gradient term, F(x) + x: the baseline every ratio is taken over."""
        act = gf.get_activation(activation).fn
        if self.family == "mlp":
            return lambda x, w1, b1, w2, b2, alpha: F.linear(act(F.linear(x, w1, b1)), w2, b2) + x
        return lambda x, w1, b1, w2, b2, alpha: F.conv2d(
            act(F.conv2d(x, w1, b1, padding=w1.shape[-1] // 2)), w2, b2,
            padding=w2.shape[-1] // 2) + x


WORKLOADS: Dict[str, Workload] = {w.name: w for w in (
    Workload("mlp_narrow", "mlp", (65536, 64, 64), (4096, 64, 64)),
    Workload("mlp_wide", "mlp", (16384, 1024, 4096), (512, 256, 512)),
    Workload("edsr_block", "conv2d", (16, 64, 64, 48, 48, 3), (2, 16, 16, 24, 24, 3)),
)}
