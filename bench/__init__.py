"""Benchmarks for gradres_fused: `python -m bench` (see bench/__main__.py)."""
