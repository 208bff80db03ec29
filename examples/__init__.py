"""The experiments: `python -m examples.<name> [--quick]` (highfreq, spectral, sr,
digits). Each is deterministic per seed and writes JSON + PNG + a markdown table under
examples/results/."""
