"""Triton kernels, installed as the subpackage `gradres_fused.kernels` (docs/DESIGN.md §5).

Importing this package never imports Triton: kernel modules do, and the `triton` backend registers
itself only when Triton can run on the tensors' device.
"""
