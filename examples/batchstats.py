"""The batch-statistics trap (docs/DESIGN.md §4.1), shown.

Part 1 — the block. For a ResNet basic block F = conv–BN–ReLU–conv–BN, g = ∇ₓΣF(x) is computed
in training mode (BatchNorm normalizes with the batch's statistics), with those statistics held
constant (`GradientResidual(batch_stats="frozen")`), and in eval mode (running statistics). In
training mode Σ over the batch of a BatchNorm's output is a constant per channel, so g ≡ 0 up to
rounding: a gradient residual block with batch statistics trains as F(x) + (1−m)·x and is
evaluated with a unit-norm ĝ.

Part 2 — a classifier. A small ResNet with BatchNorm on scikit-learn's digits (1×8×8 images, 10
classes): stem conv–BN–ReLU, `--blocks` basic blocks, average pool, linear. The blocks are
  residual        relu(x + F(x))
  gradres_asis    relu(GradientResidual(F, batch_stats="allow")(x))   (g ≡ 0 in training)
  gradres_frozen  relu(GradientResidual(F, batch_stats="frozen")(x))  (g per sample at the batch
                                                                       statistics)
with learnable m = sigmoid(alpha), alpha_init 0, detach (stop-gradient) mode. Adam lr 1e-3, batch
64, a stratified quarter held out, a new split and initialization per seed. Reported per model:
accuracy on the training set as it is met in training (train mode, batch statistics, batches of
64, after the last epoch), accuracy on the training set and the test set in eval mode, the mean
per-sample ‖g‖ of the first block in train and eval mode after training, and m; means ± 95% CI
over seeds.

    python -m examples.batchstats [--quick] [--seeds S] [--epochs E] [--blocks B] [--width C]
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import (legend_outside, mean_ci95, n_params, padded_limits, parse_args, parser, pm,
                     progress, save_figure, seed_all, table, timed, write)

MODELS = ["residual", "gradres_asis", "gradres_frozen"]


def body(c: int) -> nn.Sequential:
    """F of a ResNet basic block: conv–BN–ReLU–conv–BN at c channels."""
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))


class Block(nn.Module):
    def __init__(self, c: int, model: str, backend: str = "auto"):
        super().__init__()
        import gradres_fused as gf
        f = body(c)
        if model == "residual":
            self.f, self.gr = f, None
        else:
            mode = {"gradres_asis": "allow", "gradres_frozen": "frozen"}[model]
            self.f, self.gr = f, gf.GradientResidual(f, batch_stats=mode, backend=backend)

    def forward(self, x):
        return F.relu(x + self.f(x) if self.gr is None else self.gr(x))


class Net(nn.Module):
    def __init__(self, model: str, c: int, blocks: int, backend: str = "auto"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*[Block(c, model, backend) for _ in range(blocks)])
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def block_g(f: nn.Module, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
    """g = ∇ₓΣF(x) in f's current mode; `frozen`: with the batch statistics held constant."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        if frozen:
            from gradres_fused.wrapping import FrozenBatchStats, batch_stat_modules
            fb = FrozenBatchStats(f, batch_stat_modules(f))
            fb.live(xx)
            out = fb.frozen(xx)
        else:
            out = f(xx)
        g, = torch.autograd.grad(out.sum(), xx)
    return g


def per_sample_norm(g: torch.Tensor) -> torch.Tensor:
    return g.flatten(1).norm(dim=1)


def part1(seed: int = 0, c: int = 16, n: int = 32, hw: int = 8) -> dict:
    """g of one basic block in train mode, frozen statistics, and eval mode (running statistics
    from 20 training-mode batches first)."""
    seed_all(seed)
    f = body(c)
    with torch.no_grad():
        for _ in range(20):
            f(torch.randn(n, c, hw, hw))
    x = torch.randn(n, c, hw, hw)
    f.train()
    train, frozen = block_g(f, x), block_g(f, x, frozen=True)
    f.eval()
    ev = block_g(f, x)
    row = lambda g: {"max_abs_g": g.abs().max().item(),  # noqa: E731
                     "mean_sample_norm": per_sample_norm(g).mean().item()}
    return {"block": f"conv–BN–ReLU–conv–BN, {c} channels, input {n}×{c}×{hw}×{hw}",
            "train": row(train), "frozen": row(frozen), "eval": row(ev)}


def split(seed):
    """examples.digits' split (stratified quarter held out), the inputs as 1×8×8 images."""
    from .digits import split as digits_split
    xtr, ytr, xte, yte = digits_split(seed)
    return xtr.view(-1, 1, 8, 8), ytr, xte.view(-1, 1, 8, 8), yte


def accuracy(model, x, y, batch=64):
    with torch.no_grad():
        return float(torch.cat([model(xb).argmax(1) for xb in x.split(batch)]).eq(y)
                     .float().mean())


def run(model_name, seed, epochs, width, blocks, backend):
    seed_all(seed)
    xtr, ytr, xte, yte = split(seed)
    model = Net(model_name, width, blocks, backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    last = []

    def loop():
        for e in range(epochs):
            model.train()
            for idx in torch.randperm(len(xtr), generator=gen).split(64):
                opt.zero_grad(set_to_none=True)
                out = model(xtr[idx])
                F.cross_entropy(out, ytr[idx]).backward()
                opt.step()
                if e == epochs - 1:
                    last.append((out.argmax(1) == ytr[idx]).float().sum().item())
    _, seconds = timed(loop)
    # accuracy on the training set as training meets it: train mode, batch statistics (no
    # update of the running statistics for this measurement)
    model.train()
    momenta = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m, _ in momenta:
        m.momentum = 0.0
    train_mode_acc = accuracy(model, xtr, ytr)
    for m, mom in momenta:
        m.momentum = mom
    first = model.blocks[0]
    with torch.no_grad():
        h = model.stem.eval()(xtr[:64])
    model.eval()
    g_eval = per_sample_norm(block_g(first.f.eval(), h)).mean().item()
    first.f.train()
    g_train = per_sample_norm(block_g(first.f, h)).mean().item()
    model.eval()
    m = [torch.sigmoid(b.gr.alpha).item() for b in model.blocks if b.gr is not None]
    return {"train_acc_train_mode": train_mode_acc,
            "train_acc_last_epoch": sum(last) / len(xtr),
            "train_acc_eval_mode": accuracy(model, xtr, ytr),
            "test_acc_eval_mode": accuracy(model, xte, yte),
            "g_norm_train_mode": g_train, "g_norm_eval_mode": g_eval,
            "m": float(np.mean(m)) if m else None, "seconds": seconds, "params": n_params(model)}


METRICS = ["train_acc_train_mode", "train_acc_eval_mode", "test_acc_eval_mode",
           "g_norm_train_mode", "g_norm_eval_mode", "m"]


def main(argv=None):
    p = parser("examples.batchstats", __doc__, steps=False, seeds=5)
    p.add_argument("--epochs", type=int, default=None, help="default 30, quick 1")
    p.add_argument("--blocks", type=int, default=None, help="basic blocks (default 3, quick 1)")
    p.add_argument("--width", type=int, default=None, help="channels (default 16, quick 8)")
    args = parse_args(p, argv)
    seeds = args.seeds or (1 if args.quick else 5)
    epochs = args.epochs or (1 if args.quick else 30)
    blocks = args.blocks or (1 if args.quick else 3)
    width = args.width or (8 if args.quick else 16)
    block = part1()
    raw = {m: [] for m in MODELS}
    for seed, m in progress([(s, m) for s in range(seeds) for m in MODELS], desc="batchstats"):
        raw[m].append(run(m, seed, epochs, width, blocks, args.backend))
    results = {}
    for m, runs in raw.items():
        results[m] = {"params": runs[0]["params"], "seconds": float(np.mean([r["seconds"]
                                                                             for r in runs]))}
        for k in METRICS:
            v = [r[k] for r in runs]
            if v[0] is None:
                continue
            mean, ci = mean_ci95(v)
            results[m][k], results[m][k + "_ci95"], results[m][k + "_all"] = mean, ci, v
    config = dict(quick=args.quick, seeds=seeds, epochs=epochs, width=width, blocks=blocks,
                  batch=64, optimizer="Adam lr=1e-3", test_fraction=0.25, alpha_init=0.0,
                  detach=True, backend=args.backend)
    md = f"# The batch-statistics trap ({'quick' if args.quick else 'full'} mode)\n\n"
    md += f"## 1. g of one block\n\n{block['block']}; g = ∇ₓΣF(x).\n\n"
    md += table(["BatchNorm statistics", "max |g|", "mean per-sample ‖g‖"],
                [[name, f"{block[k]['max_abs_g']:.2e}", f"{block[k]['mean_sample_norm']:.3g}"]
                 for name, k in (("batch (train mode)", "train"),
                                 ("batch, held constant (frozen)", "frozen"),
                                 ("running (eval mode)", "eval"))])
    md += f"\n## 2. ResNet-with-BatchNorm on digits\n\n{config}\n\n"
    pct = lambda r, k: pm(100 * r[k], 100 * r[k + "_ci95"], ".2f", seeds) + " %"  # noqa: E731
    num = lambda r, k: pm(r[k], r[k + "_ci95"], ".3g", seeds) if k in r else "–"  # noqa: E731
    md += table(["model", "params", "train acc (train mode)", "train acc (eval mode)",
                 "test acc (eval mode)", "‖g‖ train mode", "‖g‖ eval mode", "m", "s/run"],
                [[m, str(r["params"]), pct(r, "train_acc_train_mode"),
                  pct(r, "train_acc_eval_mode"), pct(r, "test_acc_eval_mode"),
                  num(r, "g_norm_train_mode"), num(r, "g_norm_eval_mode"), num(r, "m"),
                  f"{r['seconds']:.1f}"] for m, r in results.items()])
    write(args.out, "batchstats", {"config": config, "block": block, "results": results}, md,
          args.json)
    _plot(args.out, results)


def _plot(out, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    names = list(results)
    values, errors = [], []
    for j, (k, label) in enumerate((("train_acc_train_mode", "train set, train mode"),
                                    ("train_acc_eval_mode", "train set, eval mode"),
                                    ("test_acc_eval_mode", "test set, eval mode"))):
        v = [100 * results[n][k] for n in names]
        e = [100 * results[n][k + "_ci95"] for n in names]
        values += v
        errors += e
        ax.errorbar([i + 0.15 * (j - 1) for i in range(len(names))], v, yerr=e, fmt="o",
                    capsize=3, label=label)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylabel="accuracy (%)", xlim=(-0.5, len(names) - 0.5),
           ylim=padded_limits(values, errors, lower=0, upper=100),
           title="digits, ResNet with BatchNorm")
    legend_outside(ax, fontsize=7)
    fig.tight_layout()
    save_figure(fig, out, "batchstats")


if __name__ == "__main__":
    main()
