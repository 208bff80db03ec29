"""Shared pieces of the experiments: command line, seeding, statistics, result files, and the
1-D regression model zoo (equal parameter counts)."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

import gradres_fused as gf

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")  # full-mode runs: committed, linked from the README
QUICK_RESULTS = os.path.join(HERE, "results-quick")  # --quick runs: git-ignored scratch


def _shown(path: str) -> str:
    """A results folder as the README names it (relative to the repository root)."""
    return os.path.relpath(path, os.path.dirname(HERE)) + "/"


def description(doc: str) -> str:
    """A module docstring for --help: all of it but the usage paragraph (argparse prints its
    own), its line breaks and lists kept."""
    paragraphs = [p.strip("\n") for p in doc.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if not p.lstrip().startswith("python -m "))


def parser(module: str, doc: str, steps: bool = True, seeds: int = 3) -> argparse.ArgumentParser:
    """The experiments' shared command line: `module` ("examples.digits") names the program,
    `doc` is its docstring, `seeds` the full mode's default seed count. `steps=False` leaves the
    training-length flag to the experiment (digits counts epochs)."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description(doc),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke size: seconds to a minute on 2 CPU cores; writes to "
                        f"{_shown(QUICK_RESULTS)} unless --out is given")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"number of seeds (default {seeds}, quick 1)")
    if steps:
        p.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--json", default=None, help="also write the results JSON here")
    p.add_argument("--out", default=None,
                   help=f"results folder (default {_shown(RESULTS)}, "
                        f"with --quick {_shown(QUICK_RESULTS)})")
    p.add_argument("--backend", default="auto", help="gradres_fused backend (default auto)")
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, then resolve the results folder: quick runs never overwrite the committed
    full-mode results unless --out says so."""
    args = p.parse_args(argv)
    if args.out is None:
        args.out = QUICK_RESULTS if args.quick else RESULTS
    return args


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress(iterable, **kwargs):
    """tqdm on the console (plain iteration when tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, **kwargs)


def mean_ci95(values: Sequence[float]):
    """(mean, half-width of the 95% t-interval; 0 for one value)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float(v.mean()), 0.0
    from scipy import stats
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def welch_half_width(sd_a: float, n_a: int, sd_b: float, n_b: int) -> float:
    """Half-width of the 95% Welch t-interval of a difference of two means, from each sample's
    standard deviation and size (0 when both deviations are 0)."""
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    if va + vb == 0:
        return 0.0
    from scipy import stats
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    return float(stats.t.ppf(0.975, df) * math.sqrt(va + vb))


def welch_ci95(a: Sequence[float], b: Sequence[float]):
    """(mean(a) − mean(b), half-width of its 95% Welch t-interval; nan unless both have ≥ 2
    values)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return delta, math.nan
    return delta, welch_half_width(float(a.std(ddof=1)), a.size, float(b.std(ddof=1)), b.size)


def pm(mean: float, ci95: float, spec: str, n: int, ci_spec: str = "") -> str:
    """`mean ± ci95` formatted with `spec` (`ci_spec` for the interval, default the same), or the
    mean alone when it comes from one seed: one value has no interval, and "± 0" would claim one."""
    if n < 2:
        return format(mean, spec)
    return f"{format(mean, spec)} ± {format(ci95, ci_spec or spec)}"


def legend_outside(ax, **kwargs) -> None:
    """The axes' legend to the right of the plot, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def backend_that_runs(backend: str = "auto", device: Optional[torch.device] = None) -> str:
    """The gradres_fused backend `backend` resolves to for float32 tensors on `device` (default:
    CUDA when present, else CPU), as the blocks resolve it: `auto` honours GRADRES_BACKEND and
    falls back to `composite` (same formulas, unfused) where the C++ extension is not built."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return gf.backends.get_backend(backend, device, torch.float32).name


def environment() -> Dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "backends": gf.available_backends(), "auto_backend": backend_that_runs("auto")}


def write(out_dir: str, name: str, payload: Dict, markdown: str, json_path=None) -> List[str]:
    """<out_dir>/<name>.json (and `json_path`) and <out_dir>/<name>.md; prints the table and
    where it went. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {"environment": environment(), **payload}
    paths = [os.path.join(out_dir, f"{name}.json")] + ([json_path] if json_path else [])
    for path in paths:
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)
    paths.append(os.path.join(out_dir, f"{name}.md"))
    with open(paths[-1], "w") as f:
        f.write(markdown)
    print(markdown)
    print("wrote " + ", ".join(paths), flush=True)
    return paths


def save_figure(fig, out_dir: str, name: str) -> str:
    """Save a matplotlib figure as <out_dir>/<name>.png, close it, say where it went."""
    import matplotlib.pyplot as plt
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
    return path


def padded_limits(values: Sequence[float], errors: Sequence[float] = (), pad: float = 0.1,
                  lower: float = -math.inf, upper: float = math.inf):
    """(lo, hi) axis limits showing every value ± its error, with `pad` × the span as margin on
    each side, clipped to [lower, upper] (e.g. 0–100 for a percentage). A zero span (one value,
    no error) gets a margin of `pad` × |value| (or `pad` at 0), so the point is not on the edge."""
    v = np.asarray(values, dtype=float)
    e = np.broadcast_to(np.abs(np.asarray(errors, dtype=float)) if len(errors) else 0.0, v.shape)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"values: need finite numbers, got {list(values)}")
    lo, hi = float((v - e).min()), float((v + e).max())
    margin = pad * (hi - lo) if hi > lo else pad * max(abs(hi), 1.0)
    return max(lower, lo - margin), min(upper, hi + margin)


def log_range(values, quantile: float = 0.01):
    """(vmin, vmax) for a logarithmic colour scale over the data: vmax its largest value, vmin
    the `quantile` of its positive values, so a few near-zero entries (a network's output at
    initialization) do not stretch the scale over decades that nothing else occupies."""
    v = np.asarray(values, dtype=float).ravel()
    pos = v[np.isfinite(v) & (v > 0)]
    if pos.size == 0:
        raise ValueError("values: a log scale needs at least one positive finite value")
    vmin, vmax = float(np.quantile(pos, quantile)), float(pos.max())
    return (vmin, vmax) if vmax > vmin else (vmax / 10, vmax)


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def timed(fn: Callable):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- 1-D regression models ------------------------------------------------------------------------
class Lifted(nn.Module):
    """Linear(d_in → width) → blocks → Linear(width → 1)."""

    def __init__(self, blocks: List[nn.Module], width: int, d_in: int = 1, lift=None,
                 d_out: int = 1):
        super().__init__()
        self.lift = lift if lift is not None else nn.Linear(d_in, width)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        return self.head(self.blocks(self.lift(x)))


class Plain(nn.Module):
    """φ(W x + b), no skip (the `mlp` method's block: two layers, like the residual ones)."""

    def __init__(self, width, act="relu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.act = getattr(torch, act) if act != "relu" else torch.relu

    def forward(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))


class Residual(nn.Module):
    """F(x) + x with F = fc2(φ(fc1 x)) — the same F as GradResMLP."""

    def __init__(self, width, act="relu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.act = act

    def forward(self, x):
        return x + self.fc2(gf.get_activation(self.act).fn(self.fc1(x)))


class FourierLift(nn.Module):
    """x → [sin(2πBx), cos(2πBx)] with Gaussian B (fixed), then Linear to the width."""

    def __init__(self, width, n_freq=32, sigma=10.0, d_in=1):
        super().__init__()
        self.register_buffer("B", torch.randn(d_in, n_freq) * sigma)
        self.proj = nn.Linear(2 * n_freq, width)

    def forward(self, x):
        t = 2 * math.pi * x @ self.B
        return self.proj(torch.cat([torch.sin(t), torch.cos(t)], -1))


class Siren(nn.Module):
    """SIREN (Sitzmann et al. 2020): sin(w0 (W x + b)) layers with their initialization."""

    def __init__(self, width, depth, d_in=1, w0=30.0):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(width, 1)
        self.w0 = w0
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                bound = 1 / layer.in_features if i == 0 else math.sqrt(6 / layer.in_features) / w0
                layer.weight.uniform_(-bound, bound)

    def forward(self, x):
        for layer in self.layers:
            x = torch.sin(self.w0 * layer(x))
        return self.head(x)


class MGDL(nn.Module):
    """Multi-grade deep learning (Fang & Xu, arXiv 2410.16105): grade k is a shallow net on the
    previous grade's last hidden features, trained on the residual of the earlier grades with
    them frozen; the prediction is the sum of all grades' outputs."""

    def __init__(self, width, grades, layers_per_grade=2, d_in=1, act="relu"):
        super().__init__()
        self.grades = nn.ModuleList()
        self.heads = nn.ModuleList()
        for g in range(grades):
            dims = [d_in if g == 0 else width] + [width] * layers_per_grade
            self.grades.append(nn.Sequential(*[m for a, b in zip(dims[:-1], dims[1:])
                                               for m in (nn.Linear(a, b), nn.ReLU())]))
            self.heads.append(nn.Linear(width, 1))
        self.active = grades  # grades used by forward (training sets it grade by grade)

    def forward(self, x):
        out, h = 0.0, x
        for g in range(self.active):
            h = self.grades[g](h)
            out = out + self.heads[g](h)
        return out

    def train_grade(self, g: int):
        """Freeze everything, then unfreeze grade g; forward uses grades 0..g."""
        self.active = g + 1
        for i, (body, head) in enumerate(zip(self.grades, self.heads)):
            for p in list(body.parameters()) + list(head.parameters()):
                p.requires_grad_(i == g)
        return [p for p in self.parameters() if p.requires_grad]


def build(method: str, width: int, depth: int, backend: str = "auto", act: str = "relu",
          d_in: int = 1, d_out: int = 1) -> nn.Module:
    """The methods of examples.highfreq at a given width; `depth` residual blocks."""
    def grad_blocks(**kw):
        return [gf.GradResMLP(width, width, activation=act, backend=backend, **kw)
                for _ in range(depth)]
    if method == "mlp":
        return Lifted([Plain(width, act) for _ in range(depth)], width, d_in, d_out=d_out)
    if method == "resnet":
        return Lifted([Residual(width, act) for _ in range(depth)], width, d_in, d_out=d_out)
    if method == "gradres":  # gradient residual only: m = sigmoid(20) ≈ 1, frozen
        return Lifted(grad_blocks(alpha_init=20.0, learn_alpha=False), width, d_in, d_out=d_out)
    if method == "gradres_convex":
        return Lifted(grad_blocks(), width, d_in, d_out=d_out)
    if method == "gradres_second_order":
        return Lifted(grad_blocks(detach=False), width, d_in, d_out=d_out)
    if method == "fourier_features":
        return Lifted([Residual(width, act) for _ in range(depth)], width, d_in,
                      lift=FourierLift(width, d_in=d_in))
    if method == "siren":
        return Siren(width, 2 * depth + 1, d_in)
    if method == "mgdl":
        return MGDL(width, grades=depth, d_in=d_in)
    raise ValueError(f"unknown method {method!r}")


def width_for(method: str, target: int, depth: int, **kw) -> int:
    """The width whose parameter count is closest to `target` (equal-budget comparisons)."""
    best = min(range(4, 257), key=lambda w: abs(n_params(build(method, w, depth, **kw)) - target))
    return best
