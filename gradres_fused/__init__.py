"""gradres_fused: fused kernels for gradient residual connections.

    y = F(x) + (1 − m)·x + m·ĝ,  ĝ = per-sample normalized ∇_x ΣF(x),  m = sigmoid(alpha)

See docs/DESIGN.md for the math and the contract every backend implements.
"""
from .activations import ACTIVATIONS, get_activation
from .backends import available_backends
from .nn import GradientResidual, GradResConv2d, GradResMLP, convert
from .ops import gradres_conv2d, gradres_mlp

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "GradientResidual", "GradResConv2d", "GradResMLP", "available_backends",
    "convert", "get_activation", "gradres_conv2d", "gradres_mlp",
]
