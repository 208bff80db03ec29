"""The spectral-bias picture (Rahaman et al., arXiv 1806.08734) for resnet, gradres_convex and
mgdl: target λ(z) = Σ_i sin(2π k_i z + φ_i), k_i = 5, 10, …, 50, equal amplitudes, random phases;
ReLU networks of equal parameter count, full-batch Adam. Every few steps the FFT of the network's
output on the training grid gives |f̂(k_i)|/A_i; a frequency counts as learned at the first
step where that ratio reaches 0.9 and its phase error is below 0.3 rad.

    python -m examples.spectral [--quick] [--seeds S] [--steps T] [--json FILE]
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .common import (build, log_range, mean_ci95, n_params, parse_args, parser, progress,
                     save_figure, seed_all, table, width_for, write)

MODELS = ["resnet", "gradres_convex", "mgdl"]
FREQS = list(range(5, 55, 5))
N_GRID = 400  # grid points on [0, 1): FFT bin k is frequency k


def spectrum(f: np.ndarray, phases: np.ndarray):
    """(|f̂(k_i)|/A_i, phase error) for the target frequencies (A_i = 1)."""
    c = np.fft.rfft(f) / (len(f) / 2)
    amp = np.abs(c[FREQS])
    # sin(2πkz + φ) has coefficient e^{i(φ − π/2)}
    err = np.abs(np.angle(c[FREQS] * np.exp(-1j * (phases - np.pi / 2))))
    return amp, err


def run(model_name, width, depth, steps, every, seed, backend):
    seed_all(seed)
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, len(FREQS))
    z = torch.arange(N_GRID, dtype=torch.float32).unsqueeze(1) / N_GRID
    y = sum(torch.sin(2 * math.pi * k * z + float(p)) for k, p in zip(FREQS, phases))
    model = build(model_name, width, depth, backend=backend)
    amps, learned = [], {k: None for k in FREQS}
    mse = torch.nn.functional.mse_loss
    grades = len(model.grades) if model_name == "mgdl" else 1
    params = model.train_grade(0) if model_name == "mgdl" else list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    for step in range(steps + 1):
        if model_name == "mgdl" and step and step % (steps // grades) == 0 and \
                step // (steps // grades) < grades:
            opt = torch.optim.Adam(model.train_grade(step // (steps // grades)), lr=1e-3)
        if step % every == 0:
            with torch.no_grad():
                a, e = spectrum(model(z).squeeze(1).numpy().astype(np.float64), phases)
            amps.append(a.tolist())
            for k, ak, ek in zip(FREQS, a, e):
                if learned[k] is None and ak >= 0.9 and ek < 0.3:
                    learned[k] = step
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        mse(model(z), y).backward()
        opt.step()
    return np.array(amps), learned


def main(argv=None):
    args = parse_args(parser("examples.spectral", __doc__), argv)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (100 if args.quick else 6000)
    every = max(1, steps // 100)
    depth, budget = (2, 4000) if args.quick else (4, 17000)
    widths = {m: width_for(m, budget, depth) for m in MODELS}
    heat, learned = {}, {m: [] for m in MODELS}
    for seed, m in progress([(s, m) for s in range(seeds) for m in MODELS], desc="spectral"):
        amps, lrn = run(m, widths[m], depth, steps, every, seed, args.backend)
        if seed == 0:
            heat[m] = amps
        learned[m].append(lrn)

    results = {}
    for m in MODELS:
        per_k = {}
        for k in FREQS:
            steps_k = [r[k] for r in learned[m]]
            done = [s for s in steps_k if s is not None]
            per_k[str(k)] = {"learned_in": f"{len(done)}/{len(steps_k)}",
                             "step_mean": mean_ci95(done)[0] if done else None,
                             "step_ci95": mean_ci95(done)[1] if done else None}
        results[m] = {"params": n_params(build(m, widths[m], depth)), "per_frequency": per_k,
                      "final_amplitude_seed0": heat[m][-1].tolist()}
    config = dict(quick=args.quick, seeds=seeds, steps=steps, record_every=every, depth=depth,
                  param_budget=budget, grid=N_GRID, optimizer="Adam lr=1e-3 full batch",
                  criterion="|f̂(k)|/A ≥ 0.9 and phase error < 0.3 rad", backend=args.backend)
    md = (f"# Spectral bias ({'quick' if args.quick else 'full'} mode)\n\n{config}\n\n"
          "Step at which each frequency is first learned (mean over the seeds that learned it; "
          "learned/seeds in brackets; — never within the budget).\n\n")
    rows = []
    for m in MODELS:
        row = [m, str(results[m]["params"])]
        for k in FREQS:
            r = results[m]["per_frequency"][str(k)]
            row.append("—" if r["step_mean"] is None else
                       f"{r['step_mean']:.0f} ({r['learned_in']})")
        rows.append(row)
    md += table(["model", "params"] + [f"k={k}" for k in FREQS], rows)
    write(args.out, "spectral", {"config": config, "results": results}, md, args.json)
    _plot(args.out, heat, every)


def _plot(out, heat, every):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    # One log colour scale over all panels, spanning what the runs reached: a short run's
    # amplitudes stay far below 1 and would be uniformly dark on a fixed 0–1 scale.
    norm = LogNorm(*log_range(np.concatenate([a.ravel() for a in heat.values()])))
    fig, axes = plt.subplots(1, len(heat), figsize=(5 * len(heat), 4), sharey=True)
    for ax, (m, amps) in zip(np.atleast_1d(axes), heat.items()):
        im = ax.imshow(amps.T, aspect="auto", origin="lower", norm=norm, cmap="viridis",
                       extent=(0, every * (len(amps) - 1), FREQS[0] - 2.5, FREQS[-1] + 2.5))
        ax.set(title=m, xlabel="training step", ylabel="frequency k")
    fig.colorbar(im, ax=axes, label="|f̂(k)| / A_k (log scale; learned at ≥ 0.9)")
    save_figure(fig, out, "spectral")


if __name__ == "__main__":
    main()
