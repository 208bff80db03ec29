"""Classification parity on scikit-learn's bundled digits (8×8, 10 classes): a residual MLP vs
gradient residual MLPs (learnable alpha; detach and second-order), same width, depth, optimizer
and epochs. Test accuracy on a held-out stratified quarter, mean ± 95% CI over seeds (a new
split and initialization per seed).

    python -m examples.digits [--quick] [--seeds S] [--epochs E] [--json FILE]
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .common import (build, mean_ci95, n_params, padded_limits, parse_args, parser, pm,
                     progress, save_figure, seed_all, table, timed, write)

METHODS = ["resnet", "gradres_convex", "gradres_second_order"]


def split(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.25, stratify=y,
                                          random_state=seed)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return t(xtr, torch.float32), t(ytr, torch.long), t(xte, torch.float32), t(yte, torch.long)


def run(method, seed, epochs, width, depth, backend):
    seed_all(seed)
    xtr, ytr, xte, yte = split(seed)
    model = build(method, width, depth, backend=backend, d_in=64, d_out=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)

    def loop():
        for _ in range(epochs):
            for idx in torch.randperm(len(xtr), generator=gen).split(64):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
                opt.step()
    _, seconds = timed(loop)
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return acc, seconds, n_params(model)


def command_line():
    p = parser("examples.digits", __doc__, steps=False, seeds=5)
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the training set per run (default 40, quick 2)")
    # The flag's name before --epochs; it always counted epochs, not optimizer steps.
    p.add_argument("--steps", type=int, default=None, dest="deprecated_steps",
                   metavar="EPOCHS", help="deprecated alias of --epochs")
    return p


def parse(argv=None):
    p = command_line()
    args = parse_args(p, argv)
    if args.deprecated_steps is not None:
        if args.epochs is not None:
            p.error("--steps is the deprecated name of --epochs: give only --epochs")
        warnings.warn("examples.digits: --steps is deprecated (it counts epochs, not optimizer "
                      "steps); use --epochs", FutureWarning, stacklevel=2)
        args.epochs = args.deprecated_steps
    return args


def main(argv=None):
    args = parse(argv)
    seeds = args.seeds or (1 if args.quick else 5)
    epochs = args.epochs or (2 if args.quick else 40)
    width, depth = (32, 2) if args.quick else (64, 3)
    raw = {m: [] for m in METHODS}
    for seed, m in progress([(s, m) for s in range(seeds) for m in METHODS], desc="digits"):
        raw[m].append(run(m, seed, epochs, width, depth, args.backend))
    results = {}
    for m, runs in raw.items():
        acc = [a for a, _, _ in runs]
        mean, ci = mean_ci95(acc)
        results[m] = {"accuracy": mean, "accuracy_ci95": ci, "accuracies": acc,
                      "seconds": float(np.mean([s for _, s, _ in runs])), "params": runs[0][2]}
    config = dict(quick=args.quick, seeds=seeds, epochs=epochs, width=width, depth=depth,
                  batch=64, optimizer="Adam lr=1e-3", test_fraction=0.25, backend=args.backend)
    md = (f"# Digits classification ({'quick' if args.quick else 'full'} mode)\n\n{config}\n\n")
    md += table(["method", "params", "test accuracy", "s/run"],
                [[m, str(r["params"]),
                  pm(100 * r["accuracy"], 100 * r["accuracy_ci95"], ".2f", seeds) + " %",
                  f"{r['seconds']:.1f}"] for m, r in results.items()])
    write(args.out, "digits", {"config": config, "results": results}, md, args.json)
    _plot(args.out, results)


def _plot(out, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(results)
    acc = [100 * results[n]["accuracy"] for n in names]
    ci = [100 * results[n]["accuracy_ci95"] for n in names]
    # Points with error bars on an axis fitted to the data: bars would need an axis from 0.
    ax.errorbar(range(len(names)), acc, yerr=ci, fmt="o", capsize=4)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylabel="test accuracy (%)", ylim=padded_limits(acc, ci, lower=0, upper=100),
           xlim=(-0.5, len(names) - 0.5), title="digits")
    fig.tight_layout()
    save_figure(fig, out, "digits")


if __name__ == "__main__":
    main()
