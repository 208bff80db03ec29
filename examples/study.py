"""Where do gradient residuals help? A resumable, staged study of 1-D high-frequency regression.

Every run is one configuration — (target frequency k, activation, model, parameter budget,
depth, seed, and for the ablations normalize / eps / alpha_init / detach) — fitting
y = sin(2πkx) on [0, 1] alone. Results are appended, one JSON line per run, to a JSONL file
keyed by the configuration, so an interrupted or extended study resumes and never redoes a run.
SIREN (sine) and MGDL (ReLU) do not use the activation: each is trained once per (k, budget,
depth, seed) and its record copied, marked "copied_from", to every activation that asks.

Training (stated once, the same for every run): full-batch Adam, learning rate 1e-3 decayed by a
cosine to 1e-5 over the run's steps (SIREN: 1e-4 to 1e-6, it diverges at 1e-3), 1,024 evenly
spaced training points, 1,024 held-out uniform test points (fixed). A model "fits" a target when
its test MSE is below 1e-2 (the target's variance is 0.5). Convergence rule: a run has
*plateaued* when its best train MSE over the last quarter of the steps is within 10% of its best
over the third quarter, or below 1e-5; the report gives the share of plateaued runs per cell, and
the step budget (6,000) was chosen so that the residual net plateaus on the targets it can fit.

Stages (`--stage`):
  1  screening: k ∈ {1, 2, 4, 8, 16, 32, 64} × activations relu, tanh, sin, gelu, silu × models
     plain MLP, residual, gradient residual m = 1, learnable m; ≈17k parameters, depth 4, 2 seeds.
  2  confirmation on the cells stage 1 selects (the cells where a gradient residual model and the
     residual net differ by more than their seed spread, and each activation's frontier k where
     the residual net stops fitting): 5 seeds, ≈17k and ≈130k parameters, depths 4 and 8, plus
     second order, MGDL, Fourier features and SIREN. Its runs are ordered so that an
     interrupted stage has whole cells: all cells at 17k parameters and depth 4 first, the most
     promising cell first (the lowest gradient residual − residual log10 test MSE in stage 1).
  3  ablations on the three cells with the largest gradient residual advantage that stage 2
     has confirmed (before any is confirmed, its three most promising): normalize on/off, eps,
     alpha init ∈ {−4, 0, 4}, m = 1 vs learnable, detach vs second order.
The screening runs k ≤ 16 (both seeds) before k = 32, 64. `--max-runs N` stops a stage after N
new runs; `--k`, `--activations`, `--models`, `--seeds`, `--depth` and `--budget` select some
of its runs; a later call resumes where it stopped. `--steps T` trains the selected runs T
steps instead of 6,000 (the schedule stretched to T): the convergence check, reported beside
the same cells at 6,000 steps.
Each gradient residual run also records the mechanism diagnostic of its first block, at
initialization and after training: the number of distinct ĝ directions over the training inputs
and the mean cosine between ĝ at neighbouring inputs.

    python -m examples.study [--stage 1|2|3] [--quick] [--workers 2] [--jsonl FILE] [--report]
                             [--k K ...] [--activations A ...] [--models M ...] [--seeds S]
                             [--depth D] [--budget P] [--steps T] [--max-runs N]
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .common import (RESULTS, QUICK_RESULTS, FourierLift, Lifted, MGDL, Siren, backend_that_runs,
                     mean_ci95, n_params, save_figure, table, welch_ci95)

ACTIVATIONS = ["relu", "tanh", "sin", "gelu", "silu"]
FREQUENCIES = [1, 2, 4, 8, 16, 32, 64]
GRADRES_MODELS = ["gradres", "gradres_learn", "gradres_2nd"]
STAGE1_MODELS = ["mlp", "resnet", "gradres", "gradres_learn"]
STAGE2_MODELS = ["mlp", "resnet", "gradres", "gradres_learn", "gradres_2nd", "mgdl",
                 "fourier_features", "siren"]
FIT_MSE = 1e-2
STEPS = 6000  # every stage's step budget; --steps runs are a separate convergence check
ABLATION_KEYS = ("normalize", "eps", "alpha_init", "learn_alpha", "detach")  # stage 3's options
N_TRAIN = N_TEST = 1024
SCHEDULE = "Adam full batch, lr 1e-3 → 1e-5 cosine (SIREN 1e-4 → 1e-6)"


# ---- models ---------------------------------------------------------------------------------------
class Block(nn.Module):
    """fc2(φ(fc1 x)), with the skip `kind`: none (plain), x (residual)."""

    def __init__(self, width: int, act: str, skip: bool):
        super().__init__()
        import gradres_fused as gf
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.fn, self.skip = gf.get_activation(act).fn, skip

    def forward(self, x):
        h = self.fc2(self.fn(self.fc1(x)))
        return x + h if self.skip else self.fn(h)


def build(model: str, width: int, depth: int, act: str, backend: str = "auto",
          **gradres) -> nn.Module:
    """A 1-D regression network of `depth` blocks at `width`; `gradres` holds the gradient
    residual options (normalize, eps, alpha_init, learn_alpha, detach) for the gradres models."""
    import gradres_fused as gf
    if model in ("mlp", "resnet"):
        return Lifted([Block(width, act, model == "resnet") for _ in range(depth)], width)
    if model in GRADRES_MODELS:
        kw = dict(normalize=True, eps=1e-6, alpha_init=0.0, learn_alpha=True, detach=True)
        if model == "gradres":  # gradient residual only: m = sigmoid(20) ≈ 1, frozen
            kw.update(alpha_init=20.0, learn_alpha=False)
        if model == "gradres_2nd":
            kw.update(detach=False)
        kw.update(gradres)
        return Lifted([gf.GradResMLP(width, width, activation=act, backend=backend, **kw)
                       for _ in range(depth)], width)
    if model == "fourier_features":
        return Lifted([Block(width, act, True) for _ in range(depth)], width,
                      lift=FourierLift(width))
    if model == "siren":
        return Siren(width, 2 * depth + 1)
    if model == "mgdl":
        return MGDL(width, grades=depth, act="relu")
    raise ValueError(f"model: unknown {model!r}; known: {STAGE2_MODELS}")


def width_for(model: str, budget: int, depth: int, act: str) -> int:
    """The width whose trainable parameter count is closest to `budget`."""
    def count(w):
        return n_params(build(model, w, depth, act))
    lo, hi = 2, 512
    while hi - lo > 1:  # parameter count grows with width: bisect, then pick the closer side
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < budget else (lo, mid)
    return min((lo, hi), key=lambda w: abs(count(w) - budget))


# ---- configurations -------------------------------------------------------------------------------
def config(stage: int, k: int, act: str, model: str, budget: int, depth: int, seed: int,
           steps: int, **ablation) -> Dict:
    c = dict(stage=stage, k=k, activation=act, model=model, budget=budget, depth=depth,
             seed=seed, steps=steps)
    c.update(sorted(ablation.items()))
    return c


def key(c: Dict) -> str:
    """A run's identity: its configuration, without the stage that first asked for it."""
    return json.dumps({k: v for k, v in c.items() if k != "stage"}, sort_keys=True)


ACTIVATION_FREE = ("siren", "mgdl")  # built without the cell's activation (sine; ReLU)


def trained_key(c: Dict) -> str:
    """What a run trains: its key, without the activation for the models that do not use it,
    so that their runs at one k, budget, depth and seed are trained once and recorded for
    every activation that asks (a copy, marked "copied_from")."""
    if c["model"] not in ACTIVATION_FREE:
        return key(c)
    return key({k: v for k, v in c.items() if k != "activation"})


def stage1(quick: bool) -> List[Dict]:
    if quick:
        return [config(1, k, a, m, 600, 2, 0, 60) for k in (1, 16) for a in ("relu", "tanh")
                for m in STAGE1_MODELS]
    # k ≤ 16 first, both seeds, then the high frequencies no model of this size fits: an
    # interrupted screening has the cells stage 2 selects from complete soonest
    return [config(1, k, a, m, 17000, 4, s, STEPS) for high in (False, True) for s in range(2)
            for k in FREQUENCIES if (k > 16) == high for a in ACTIVATIONS for m in STAGE1_MODELS]


def cells(runs: Iterable[Dict]) -> Dict[Tuple[int, str, str, int, int], List[Dict]]:
    """Runs grouped by (k, activation, model, budget, depth), over seeds: ablation-free runs at
    the stages' step budget."""
    out: Dict = {}
    for r in runs:
        c = r["config"]
        if any(x in c for x in ABLATION_KEYS) or c["steps"] != STEPS:
            continue
        out.setdefault((c["k"], c["activation"], c["model"], c["budget"], c["depth"]), []).append(r)
    return out


def fitted(rs: List[Dict]) -> bool:
    """Whether a cell's runs fit the target: mean test MSE over its seeds < FIT_MSE."""
    return sum(r["test_mse"] for r in rs) / len(rs) < FIT_MSE


def _spread(rs: List[Dict]) -> Tuple[float, float, float]:
    """(mean log10 test MSE, min, max) over seeds."""
    v = [math.log10(max(r["test_mse"], 1e-12)) for r in rs]
    return sum(v) / len(v), min(v), max(v)


def selected_cells(runs: Iterable[Dict], budget: int = 17000, depth: int = 4) -> List[Tuple[int, str]]:
    """Stage 2's cells from stage 1: (k, activation) where a gradient residual model and the
    residual net differ by more than their seed spread (the ranges of log10 test MSE do not
    overlap), and each activation's frontier k (the lowest k where the residual net's mean
    test MSE is ≥ FIT_MSE)."""
    by = cells(runs)
    chosen = []
    for act in ACTIVATIONS:
        ks = sorted({k for (k, a, m, b, d) in by if a == act and b == budget and d == depth})
        for k in ks:
            res = by.get((k, act, "resnet", budget, depth))
            if not res:
                continue
            _, rlo, rhi = _spread(res)
            for m in ("gradres", "gradres_learn"):
                g = by.get((k, act, m, budget, depth))
                if g:
                    _, glo, ghi = _spread(g)
                    if ghi < rlo or glo > rhi:
                        chosen.append((k, act))
        frontier = [k for k in ks if by.get((k, act, "resnet", budget, depth))
                    and not fitted(by[(k, act, "resnet", budget, depth)])]
        if frontier:
            chosen.append((frontier[0], act))
    return sorted(set(chosen), key=lambda c: (ACTIVATIONS.index(c[1]), c[0]))


def by_promise(runs: List[Dict], chosen: List[Tuple[int, str]], budget: int = 17000,
               depth: int = 4) -> List[Tuple[int, str]]:
    """`chosen` cells, the most promising for a gradient residual first: ascending by the best
    gradient residual model's mean log10 test MSE minus the residual net's in `runs`."""
    by = cells(runs)

    def gap(cell):
        k, act = cell
        res = by.get((k, act, "resnet", budget, depth))
        gs = [by[(k, act, m, budget, depth)] for m in ("gradres", "gradres_learn")
              if (k, act, m, budget, depth) in by]
        if not res or not gs:
            return math.inf
        return min(_spread(g)[0] for g in gs) - _spread(res)[0]
    return sorted(chosen, key=gap)


def screening_runs(runs: Iterable[Dict]) -> List[Dict]:
    """The screening's runs, by configuration (its two seeds of its four models), whichever
    stage first ran them: stage 2 reuses a run with the same configuration."""
    keys = {key(c) for c in stage1(False) + stage1(True)}
    return [r for r in runs if r["key"] in keys]


def stage2_cells(runs: List[Dict]) -> List[Tuple[int, str]]:
    """The cells stage 2 confirms, from the screening's runs alone, the most promising first."""
    first = screening_runs(runs)
    return by_promise(first, selected_cells(first))


SETTINGS = ((17000, 4), (17000, 8), (130000, 4), (130000, 8))  # stage 2's (budget, depth)


def stage2(runs: List[Dict], quick: bool) -> List[Dict]:
    """Stage 2's runs, ordered so that an interrupted confirmation has whole cells: every cell at
    17k parameters and depth 4 first (the most promising cell first, all its models and seeds),
    then depth 8, then 130k parameters."""
    if quick:
        return [config(2, 16, "tanh", m, 600, 2, 0, 60) for m in ("resnet", "gradres_2nd", "siren")]
    chosen = stage2_cells(runs)
    out = []
    for budget, depth in SETTINGS:
        for k, act in chosen:
            models = STAGE2_MODELS if act != "sin" else [m for m in STAGE2_MODELS if m != "siren"]
            out += [config(2, k, act, m, budget, depth, s, STEPS) for s in range(5)
                    for m in models]
    return out


ABLATIONS = [dict(normalize=False), dict(eps=1e-2), dict(eps=1.0), dict(alpha_init=-4.0),
             dict(alpha_init=4.0), dict(alpha_init=0.0, learn_alpha=False),
             dict(detach=False)]


def stage3_cells(runs: List[Dict]) -> List[Tuple[int, str]]:
    """The (at most) three cells stage 3 ablates: of the cells stage 2 has confirmed (every
    stage-2 model, 5 seeds, at 17k parameters and depth 4) where a gradient residual model fits
    (mean test MSE < FIT_MSE: an ablation of a model that fits nothing says little), the three
    with the largest confirmed gradient residual advantage over the residual net. Before any is
    confirmed: stage 2's first three cells where a gradient residual model fits in the
    screening. The choice does not move when the screening grows; it can when stage 2 confirms
    a cell with a larger advantage (the ablations already run stay in the results and report)."""
    by, chosen = cells(runs), stage2_cells(runs)

    def gradres_fits(groups, k, act):
        return any(fitted(groups[(k, act, m, 17000, 4)]) for m in ("gradres", "gradres_learn")
                   if (k, act, m, 17000, 4) in groups)
    done = [(k, act) for k, act in chosen if gradres_fits(by, k, act)
            and all(len(by.get((k, act, m, 17000, 4), [])) >= 5 for m in STAGE2_MODELS
                    if not (m == "siren" and act == "sin"))]
    if done:
        return by_promise(runs, done)[:3]
    first = cells(screening_runs(runs))
    return [c for c in chosen if gradres_fits(first, *c)][:3]


def stage3(runs: List[Dict], quick: bool) -> List[Dict]:
    if quick:
        return [config(3, 16, "tanh", "gradres_learn", 600, 2, 0, 60, **a) for a in ABLATIONS[:2]]
    picked = stage3_cells(runs)
    return [config(3, k, act, "gradres_learn", 17000, 4, s, STEPS, **a) for k, act in picked
            for a in ABLATIONS for s in range(5)]


# ---- one run --------------------------------------------------------------------------------------
def data(k: int) -> Tuple[torch.Tensor, ...]:
    x = torch.linspace(0, 1, N_TRAIN, dtype=torch.float64).float().unsqueeze(1)
    xt = torch.rand(N_TEST, 1, generator=torch.Generator().manual_seed(1234))
    f = lambda t: torch.sin(2 * math.pi * k * t)  # noqa: E731
    return x, f(x), xt, f(xt)


def _ghat(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """ĝ (normalized) of a GradResMLP block at its inputs h (rows = samples), by autograd."""
    import gradres_fused as gf
    fn = gf.get_activation(block.activation).fn
    with torch.enable_grad():
        hh = h.detach().requires_grad_(True)
        g, = torch.autograd.grad(block.fc2(fn(block.fc1(hh))).sum(), hh)
    return g / torch.sqrt((g * g).sum(1, keepdim=True) + block.eps ** 2)


def mechanism(model: nn.Module, x: torch.Tensor) -> Optional[Dict]:
    """The first gradient residual block's ĝ over the (sorted) inputs: distinct directions (rows
    equal to 1e-6 after rounding) and the mean cosine between neighbouring inputs' ĝ."""
    import gradres_fused as gf
    blocks = [m for m in model.modules() if isinstance(m, gf.GradResMLP)]
    if not blocks:
        return None
    with torch.no_grad():
        h = model.lift(x)
    g = _ghat(blocks[0], h).detach().double()
    distinct = torch.unique(torch.round(g * 1e6), dim=0).shape[0]
    cos = (g[1:] * g[:-1]).sum(1) / (g[1:].norm(dim=1) * g[:-1].norm(dim=1)).clamp_min(1e-30)
    return {"distinct_directions": int(distinct), "neighbour_cosine": float(cos.mean())}


def run_one(c: Dict, backend: str = "auto") -> Dict:
    """Train one configuration; the JSONL record."""
    torch.set_num_threads(1)
    torch.manual_seed(c["seed"])
    ab = {k: c[k] for k in ABLATION_KEYS if k in c}
    width = width_for(c["model"], c["budget"], c["depth"], c["activation"])
    model = build(c["model"], width, c["depth"], c["activation"], backend, **ab)
    x, y, xt, yt = data(c["k"])
    mech0 = mechanism(model, x)
    lr0 = 1e-4 if c["model"] == "siren" else 1e-3
    steps = c["steps"]
    mse = nn.functional.mse_loss
    t0 = time.perf_counter()
    quarter_best = [math.inf] * 4
    if c["model"] == "mgdl":  # the same total steps, split over the grades
        for g in range(len(model.grades)):
            opt = torch.optim.Adam(model.train_grade(g), lr=lr0)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps // len(model.grades),
                                                               eta_min=lr0 / 100)
            for i in range(steps // len(model.grades)):
                opt.zero_grad(set_to_none=True)
                loss = mse(model(x), y)
                loss.backward()
                opt.step()
                sched.step()
                if g == len(model.grades) - 1:
                    q = min(3, 4 * i // max(1, steps // len(model.grades)))
                    quarter_best[q] = min(quarter_best[q], loss.item())
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr0 / 100)
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = mse(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            q = min(3, 4 * i // steps)
            quarter_best[q] = min(quarter_best[q], loss.item())
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        train, test = mse(model(x), y).item(), mse(model(xt), yt).item()
    plateaued = quarter_best[3] < 1e-5 or quarter_best[3] >= 0.9 * quarter_best[2]
    return {"key": key(c), "config": c, "width": width, "params": n_params(model),
            "train_mse": train, "test_mse": test, "plateaued": bool(plateaued),
            "quarter_best_train_mse": quarter_best, "seconds": seconds,
            "mechanism_init": mech0, "mechanism_trained": mechanism(model, x),
            "backend": backend, "backend_ran": backend_ran(c["model"], backend),
            "torch": torch.__version__, "schedule": SCHEDULE}


def backend_ran(model: str, backend: str) -> Optional[str]:
    """`common.backend_that_runs` for the study's float32 CPU tensors (`auto`: `cpp` where the
    extension is built, else `composite`), or None for a model without gradient residual
    blocks. Records before this field existed do not say which ran."""
    return backend_that_runs(backend, torch.device("cpu")) if model in GRADRES_MODELS else None


def _worker(args):
    c, backend = args
    try:
        return run_one(c, backend)
    except Exception as e:  # a failed run is recorded as such, never silently dropped
        return {"key": key(c), "config": c, "error": f"{type(e).__name__}: {e}"}


# ---- the runner -----------------------------------------------------------------------------------
def load(path: str) -> List[Dict]:
    """Finished runs of a JSONL file (a torn last line from an interruption is ignored)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "error" not in r:
                out.append(r)
    return out


def _describe(c: Dict) -> str:
    extra = "".join(f" {k}={c[k]}" for k in ABLATION_KEYS if k in c)
    return (f"k={c['k']:<2} {c['activation']:<4} {c['model']:<16} {c['budget'] / 1000:g}k "
            f"depth {c['depth']} seed {c['seed']}{extra}")


def _copy(source: Dict, c: Dict) -> Dict:
    """`source`'s record for configuration `c`, which trains the same model (trained_key)."""
    return dict(source, key=key(c), config=c, copied_from=source["key"])


def run(configs: List[Dict], path: str, workers: int, backend: str,
        max_runs: Optional[int] = None) -> List[Dict]:
    """Run the configurations not yet in `path` (at most `max_runs` of them, in order),
    `workers` processes, appending as they end."""
    previous = load(path)
    done = {r["key"] for r in previous}
    todo, seen = [], set()
    for c in configs:
        if key(c) not in done and key(c) not in seen:
            todo.append(c)
            seen.add(key(c))
    missing = len(todo)
    todo = todo[:max_runs] if max_runs is not None else todo
    # the same training under another activation (ACTIVATION_FREE models): copy, do not retrain
    trained = {trained_key(r["config"]): r for r in previous}
    copies, followers, train = [], {}, []  # followers: trained_key -> configs copied after it
    for c in todo:
        t = trained_key(c)
        if t in trained:
            copies.append((c, trained[t]))
        elif t in followers:
            followers[t].append(c)
        else:
            followers[t] = []
            train.append(c)
    n_copy = len(todo) - len(train)
    print(f"study: {len(configs)} runs asked, {len(configs) - missing} already in {path}, "
          f"{len(train)} to run on {workers} worker(s)"
          + (f", {n_copy} copied from the same training under another activation "
             f"({', '.join(ACTIVATION_FREE)} do not use it)" if n_copy else "")
          + (f" ({missing - len(todo)} left for later: --max-runs)" if missing > len(todo) else ""),
          flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(c, backend) for c in train]
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers) if workers > 1 else None
    results = pool.imap_unordered(_worker, jobs) if pool else map(_worker, jobs)
    try:
        with open(path, "a+b") as f:  # a torn last line (an interrupted run) ends here
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        with open(path, "a") as f:
            for c, source in copies:
                f.write(json.dumps(_copy(source, c)) + "\n")
            f.flush()
            for i, r in enumerate(results, 1):
                f.write(json.dumps(r) + "\n")
                for c in followers[trained_key(r["config"])]:
                    f.write(json.dumps(_copy(r, c)) + "\n")
                f.flush()
                left = (time.perf_counter() - t0) / i * (len(train) - i)
                status = (r["error"] if "error" in r else
                          f"train {r['train_mse']:.2e} test {r['test_mse']:.2e} "
                          f"({r['seconds']:.1f} s){'' if r['plateaued'] else ' not plateaued'}")
                print(f"[{i}/{len(train)}] {_describe(r['config'])}: {status}; "
                      f"~{left / 60:.0f} min left", flush=True)
    finally:
        if pool:
            pool.close()
            pool.join()
    return load(path)


# ---- the report -----------------------------------------------------------------------------------
def _log_mse(rs: List[Dict]) -> List[float]:
    return [math.log10(max(r["test_mse"], 1e-12)) for r in rs]


def difference(a: List[float], b: List[float]) -> Tuple[float, float]:
    """mean(a) − mean(b) and the half-width of its 95% Welch t-interval (nan below 2 + 2)."""
    return welch_ci95(a, b)


def verdict(delta: float, ci: float) -> str:
    """Gradient residual minus residual in log10 test MSE: negative is better."""
    if math.isnan(ci):
        return "one seed"
    if delta + ci < 0:
        return "gradres better"
    if delta - ci > 0:
        return "gradres worse"
    return "no difference resolved"


def screening(runs: List[Dict], budget: int = 17000, depth: int = 4) -> Tuple[str, Dict]:
    """Stage 1's summary: per activation, the highest k each model fits (mean test MSE over
    seeds < FIT_MSE, every lower k fitted too) and the cells stage 2 selects."""
    by = cells(r for r in runs if r["config"]["budget"] == budget
               and r["config"]["depth"] == depth)
    rows, highest = [], {}
    for act in ACTIVATIONS:
        row = [act]
        for m in STAGE1_MODELS:
            ks = sorted(k for (k, a, mm, _, _) in by if a == act and mm == m)
            best = 0
            for k in ks:
                if not fitted(by[(k, act, m, budget, depth)]):
                    break
                best = k
            fewest = min((len(by[(k, act, m, budget, depth)]) for k in ks), default=0)
            highest[f"{act}/{m}"] = best
            row.append(f"{best or '–'}" + ("" if fewest >= 2 else " (1 seed at some k)"
                                           if ks else " (no runs)"))
        rows.append(row)
    chosen = stage2_cells(runs)
    n_cells = len({(k, a) for (k, a, m, b, d) in by if m in STAGE1_MODELS})
    md = (f"## Stage 1: screening ({budget // 1000}k parameters, depth {depth})\n\nThe highest "
          f"k each model fits (mean test MSE < {FIT_MSE:g}, every lower k fitted too; – none); "
          "means over the screening's two seeds, over five where stage 2 has confirmed the "
          "cell:\n\n" + table(["activation"] + STAGE1_MODELS, rows) + f"\n\n{len(chosen)} of "
          f"{n_cells} cells go to stage 2 (a gradient residual model and the residual net apart "
          "beyond their seed range in the screening, or the residual net's frontier k), the most "
          "promising first: " + (", ".join(f"k={k} {a}" for k, a in chosen) or "none") + ".\n")
    # the screening's differences themselves, so that its verdicts can be read off
    first = cells(r for r in screening_runs(runs) if r["config"]["budget"] == budget
                  and r["config"]["depth"] == depth)
    ks = sorted({k for (k, a, m, b, d) in first})
    if not ks:
        return md, {"highest_k_fitted": highest, "stage2_cells": chosen}
    drows, deltas = [], {}
    for act in ACTIVATIONS:
        row = [act]
        for k in ks:
            res = first.get((k, act, "resnet", budget, depth))
            parts = []
            for m in ("gradres", "gradres_learn", "mlp"):
                g = first.get((k, act, m, budget, depth))
                if res and g:
                    d = _spread(g)[0] - _spread(res)[0]
                    deltas[f"{act}/{k}/{m}"] = d
                    parts.append(f"{d:+.1f}")
                else:
                    parts.append("·")
            row.append(" / ".join(parts) + ("" if not res or fitted(res) else " ✗"))
        drows.append(row)
    md += (f"\nThe screening's differences (its two seeds only, mean log10 test MSE − the "
           "residual net's; negative: lower error): gradient residual m = 1 / learnable m / "
           "plain MLP; ✗ where the residual net does not fit in these two seeds (mean test MSE "
           f"≥ {FIT_MSE:g}; the table above uses every seed). No intervals: stage 2 gives "
           "those.\n\n" + table(["activation"] + [f"k={k}" for k in ks], drows) + "\n")
    return md, {"highest_k_fitted": highest, "stage2_cells": chosen, "screening_delta": deltas}


def mechanism_table(runs: List[Dict]) -> Tuple[str, List[Dict]]:
    """The mechanism diagnostic of the first gradient residual block (every gradient residual
    run — m = 1, learnable m, second order — at 17k parameters and depth 4, without ablations,
    at the stages' step budget):
    distinct ĝ directions over the 1,024 inputs and 1 − the mean cosine between neighbouring
    inputs' ĝ, at initialization and after training, per activation and k."""
    by = cells(runs)
    rows, out = [], []
    for act in ACTIVATIONS:
        for k in FREQUENCIES:
            sel = [r for m in GRADRES_MODELS
                   for r in by.get((k, act, m, 17000, 4), []) if r.get("mechanism_init")]
            if not sel:
                continue
            avg = lambda f: sum(f(r) for r in sel) / len(sel)  # noqa: E731
            d = dict(activation=act, k=k, runs=len(sel),
                     distinct_init=avg(lambda r: r["mechanism_init"]["distinct_directions"]),
                     distinct_trained=avg(lambda r: r["mechanism_trained"]["distinct_directions"]),
                     one_minus_cos_init=avg(lambda r: 1 - r["mechanism_init"]["neighbour_cosine"]),
                     one_minus_cos_trained=avg(
                         lambda r: 1 - r["mechanism_trained"]["neighbour_cosine"]))
            out.append(d)
            rows.append([act, str(k), str(len(sel)), f"{d['distinct_init']:.0f}",
                         f"{d['distinct_trained']:.0f}", f"{d['one_minus_cos_init']:.1e}",
                         f"{d['one_minus_cos_trained']:.1e}"])
    md = ("## Mechanism diagnostic (first block; gradient residual runs at 17k parameters, depth 4, "
          f"{STEPS} steps, no ablation)\n\nEvery gradient residual model's runs (m = 1, learnable "
          "m, second order). Distinct ĝ "
          "directions over the 1,024 sorted training inputs (rows equal after rounding to 1e-6) "
          "and 1 − the mean cosine between neighbouring inputs' ĝ (0: neighbours share a "
          "direction; 2: opposite), at initialization and after training; means over the runs."
          "\n\n" + table(["activation", "k", "runs", "distinct (init)", "distinct (trained)",
                            "1 − cos (init)", "1 − cos (trained)"], rows) + "\n")
    return md, out


def comparisons(runs: List[Dict]) -> Tuple[str, List[Dict]]:
    """Every (k, activation, budget, depth) with ≥ 2 seeds of the residual net and a gradient
    residual model: Δ = mean log10 test MSE (model) − (residual), 95% Welch CI, verdict."""
    by = cells(runs)
    rows, out = [], []
    for (k, act, model, budget, depth), rs in sorted(by.items(), key=lambda kv: (
            kv[0][3], kv[0][4], ACTIVATIONS.index(kv[0][1]), kv[0][0], kv[0][2])):
        res = by.get((k, act, "resnet", budget, depth))
        if model == "resnet" or not res or len(res) < 3 or len(rs) < 3:
            continue
        d, ci = difference(_log_mse(rs), _log_mse(res))
        v = verdict(d, ci) if model in GRADRES_MODELS else verdict(d, ci).replace("gradres",
                                                                                  model)
        mlp = by.get((k, act, "mlp", budget, depth))
        dm, cim = (difference(_log_mse(rs), _log_mse(mlp)) if mlp and len(mlp) >= 3
                   and model != "mlp" else (math.nan, math.nan))
        out.append(dict(k=k, activation=act, model=model, budget=budget, depth=depth,
                        seeds=len(rs), resnet_seeds=len(res), delta_log10_mse=d, ci95=ci,
                        verdict=v, delta_vs_mlp=dm, delta_vs_mlp_ci95=cim))
        rows.append([act, str(k), f"{budget // 1000}k", str(depth), model,
                     f"{len(rs)}/{len(res)}", f"{d:+.2f} ± {ci:.2f}", v,
                     "" if math.isnan(dm) else f"{dm:+.2f} ± {cim:.2f}"])
    md = ("## Against the residual net (cells with ≥ 3 seeds each)\n\nΔ = mean log10 test MSE of "
          "the model − that of the residual net at the same k, activation, parameters and depth "
          "(negative: lower error), with its 95% Welch t-interval over seeds; the last column "
          "is the same against the plain MLP.\n\n" +
          (table(["activation", "k", "params", "depth", "model", "seeds (model/residual)",
                  "Δ log10 test MSE", "verdict", "Δ vs plain MLP"], rows)
           if rows else "No such cells yet.") + "\n")
    return md, out


def verdicts(runs: List[Dict], budget: int = 17000, depth: int = 4,
             seeds: int = 5) -> Tuple[str, Dict]:
    """The study's answer at one (budget, depth): every cell stage 2 selects whose four core
    models (plain MLP, residual net, gradient residual m = 1 and learnable m) have ≥ `seeds`
    seeds, one row each: whether the residual net fits, and each other model's Δ log10 test
    MSE against it (95% Welch CI); then a tally of the gradient residual verdicts, apart for
    the cells where the residual net fits and those where it does not."""
    by = cells(runs)
    rows, out = [], []
    tally: Dict = {}
    for k, act in sorted(stage2_cells(runs), key=lambda c: (ACTIVATIONS.index(c[1]), c[0])):
        groups = {m: by.get((k, act, m, budget, depth), []) for m in STAGE1_MODELS}
        if any(len(rs) < seeds for rs in groups.values()):
            continue
        res = _log_mse(groups["resnet"])
        fits = fitted(groups["resnet"])
        row = dict(k=k, activation=act, budget=budget, depth=depth, resnet_fits=fits,
                   resnet_log10_mse=sum(res) / len(res),
                   seeds=min(len(rs) for rs in groups.values()))
        cols = [act, str(k), f"{row['resnet_log10_mse']:.2f}" + ("" if fits else " ✗")]
        for m in ("gradres", "gradres_learn", "mlp"):
            d, ci = difference(_log_mse(groups[m]), res)
            v = verdict(d, ci)
            row[m] = dict(delta_log10_mse=d, ci95=ci, verdict=v)
            mark = {"gradres better": " better", "gradres worse": " worse"}.get(v, "")
            cols.append(f"{d:+.2f} ± {ci:.2f}{mark}")
            if m != "mlp":
                t = tally.setdefault(("fits" if fits else "does not fit", m), {})
                t[v] = t.get(v, 0) + 1
        out.append(row)
        rows.append(cols)
    name = {"gradres": "m = 1", "gradres_learn": "learnable m"}
    lines = []
    for where in ("fits", "does not fit"):
        n = sum(1 for r in out if r["resnet_fits"] == (where == "fits"))
        if not n:
            continue
        parts = []
        for m in ("gradres", "gradres_learn"):
            t = tally.get((where, m), {})
            parts.append(f"{name[m]} better in {t.get('gradres better', 0)}, worse in "
                         f"{t.get('gradres worse', 0)}, unresolved in "
                         f"{t.get('no difference resolved', 0)}")
        lines.append(f"- {n} cell{'s' if n > 1 else ''} where the residual net "
                     f"{'fits' if where == 'fits' else 'does not fit'}: "
                     + "; ".join(parts) + ".")
    md = (f"## The verdicts ({budget // 1000}k parameters, depth {depth}, ≥ {seeds} seeds of "
          "the four core models)\n\nEvery stage-2 cell confirmed so far: the residual net's "
          f"mean log10 test MSE (✗: it does not fit, mean test MSE ≥ {FIT_MSE:g}; one failed "
          "seed can do that), and each model's Δ against it with its 95% Welch interval "
          "(negative: lower error; better / worse: the interval excludes 0).\n\n" +
          (table(["activation", "k", "residual net", "gradient residual m = 1", "learnable m",
                  "plain MLP"], rows) + "\n" + "\n".join(lines) if rows else
           "No cell confirmed yet.") + "\n")
    return md, {"cells": out, "tally": {f"{w}/{m}": t for (w, m), t in tally.items()}}


def ablations(runs: List[Dict]) -> Tuple[str, List[Dict]]:
    """Stage 3: per ablated cell, each ablation of the learnable-m gradient residual model beside
    that model as stage 2 ran it (normalize, eps 1e-6, alpha_init 0, learnable, detach), and the
    residual net: mean log10 test MSE ± 95% CI and Δ against the unablated model."""
    groups: Dict = {}
    for r in runs:
        c = r["config"]
        if c["steps"] != STEPS:
            continue
        ab = tuple((k, c[k]) for k in ABLATION_KEYS if k in c)
        groups.setdefault((c["k"], c["activation"], c["budget"], c["depth"], c["model"], ab),
                          []).append(r)
    rows, out = [], []
    for k, act, budget, depth in sorted({g[:4] for g in groups if g[5]}):
        base = groups.get((k, act, budget, depth, "gradres_learn", ()))
        entries = [("residual net", groups.get((k, act, budget, depth, "resnet", ()))),
                   ("gradres_learn (as stage 2)", base)]
        entries += [(", ".join(f"{a}={v}" for a, v in ab), rs) for (kk, aa, b, d, m, ab), rs in
                    sorted(groups.items(), key=lambda kv: str(kv[0][5]))
                    if (kk, aa, b, d, m) == (k, act, budget, depth, "gradres_learn") and ab]
        for label, rs in entries:
            if not rs:
                continue
            lm, ci = mean_ci95(_log_mse(rs))
            d, dci = (difference(_log_mse(rs), _log_mse(base)) if base and rs is not base
                      else (math.nan, math.nan))
            out.append(dict(k=k, activation=act, budget=budget, depth=depth, variant=label,
                            seeds=len(rs), log10_test_mse=lm, ci95=ci, delta_vs_gradres_learn=d,
                            delta_ci95=dci))
            rows.append([act, str(k), label, str(len(rs)), f"{lm:.2f} ± {ci:.2f}",
                         "" if math.isnan(d) else f"{d:+.2f} ± {dci:.2f}"])
    md = ("## Stage 3: ablations\n\nThe learnable-m gradient residual model (normalize, eps 1e-6, "
          "alpha_init 0, detach) with one option changed; mean log10 test MSE ± 95% CI over "
          "seeds and Δ against the unablated model (Welch).\n\n" +
          (table(["activation", "k", "variant", "seeds", "log10 test MSE", "Δ vs gradres_learn"],
                 rows) if rows else "No ablation runs yet.") + "\n")
    return md, out


def convergence(runs: List[Dict]) -> Tuple[str, List[Dict]]:
    """The convergence check: runs at another step budget than STEPS, each cell beside the same
    cell at STEPS, and each model's Δ log10 test MSE against the residual net at its budget."""
    groups: Dict = {}
    for r in runs:
        c = r["config"]
        if any(x in c for x in ABLATION_KEYS):
            continue
        groups.setdefault((c["k"], c["activation"], c["budget"], c["depth"], c["steps"],
                           c["model"]), []).append(r)
    checked = sorted({g[:4] for g in groups if g[4] != STEPS})
    rows, out = [], []
    for cell in checked:
        longer = {g[5] for g in groups if g[:4] == cell and g[4] != STEPS}  # models run longer
        for steps in sorted({g[4] for g in groups if g[:4] == cell}):
            res = groups.get((*cell, steps, "resnet"))
            for model in STAGE2_MODELS:
                rs = groups.get((*cell, steps, model))
                if not rs or model not in longer:
                    continue
                k, act, budget, depth = cell
                lm, ci = mean_ci95(_log_mse(rs))
                d, dci = (difference(_log_mse(rs), _log_mse(res)) if res and model != "resnet"
                          else (math.nan, math.nan))
                out.append(dict(k=k, activation=act, budget=budget, depth=depth, steps=steps,
                                model=model, seeds=len(rs), log10_test_mse=lm, ci95=ci,
                                delta_vs_resnet=d, delta_ci95=dci,
                                plateaued=sum(r["plateaued"] for r in rs) / len(rs)))
                rows.append([act, str(k), f"{budget // 1000}k", str(depth), str(steps), model,
                             str(len(rs)), f"{lm:.2f} ± {ci:.2f}",
                             "" if math.isnan(d) else f"{d:+.2f} ± {dci:.2f}",
                             f"{out[-1]['plateaued']:.0%}"])
    md = ("## Convergence check (longer training)\n\nThe same cells trained for more steps "
          "(the schedule stretched to the budget). Mean log10 test MSE ± 95% CI over seeds, and "
          "Δ against the residual net at the same budget.\n\n" +
          (table(["activation", "k", "params", "depth", "steps", "model", "seeds",
                  "log10 test MSE", "Δ vs residual", "plateaued"], rows) if rows else
           "No such runs yet.") + "\n")
    return md, out


def backends_line(runs: List[Dict]) -> str:
    """Which gradres_fused backend ran the gradient residual models' runs, by count."""
    ran = Counter(r.get("backend_ran") or "not recorded" for r in runs
                  if r["config"]["model"] in GRADRES_MODELS)
    return ("Backend of the gradient residual runs: " +
            ", ".join(f"{n} {b}" for b, n in sorted(ran.items())) + "." if ran else "")


def report(runs: List[Dict], out: str, name: str = "study") -> List[str]:
    """Markdown + JSON summary and the k × model heat maps, one per activation."""
    by = cells(runs)
    rows, summary = [], []
    for (k, act, model, budget, depth), rs in sorted(by.items(), key=lambda kv: (
            ACTIVATIONS.index(kv[0][1]) if kv[0][1] in ACTIVATIONS else 99, kv[0][3], kv[0][4],
            kv[0][0], kv[0][2])):
        mean, ci = mean_ci95([r["test_mse"] for r in rs])
        plateau = sum(r["plateaued"] for r in rs) / len(rs)
        mech = [r["mechanism_trained"] for r in rs if r.get("mechanism_trained")]
        summary.append(dict(k=k, activation=act, model=model, budget=budget, depth=depth,
                            seeds=len(rs), test_mse=mean, test_mse_ci95=ci, plateaued=plateau,
                            train_mse=sum(r["train_mse"] for r in rs) / len(rs)))
        err = f" ± {ci:.1e}" if len(rs) > 1 else ""
        m = (f"{sum(x['distinct_directions'] for x in mech) / len(mech):.0f} / "
             f"{sum(x['neighbour_cosine'] for x in mech) / len(mech):.3f}") if mech else ""
        rows.append([act, str(k), model, f"{budget // 1000}k", str(depth), str(len(rs)),
                     f"{mean:.2e}{err}", f"{plateau:.0%}", m])
    screen_md, screen = screening(runs)
    mech_md, mech = mechanism_table(runs)
    comp_md, comp = comparisons(runs)
    conv_md, conv = convergence(runs)
    abl_md, abl = ablations(runs)
    ver_md, ver = verdicts(runs)
    copied = sum(1 for r in runs if "copied_from" in r)
    md = ("# Gradient residual study (1-D, sin(2πkx))\n\n" + f"Schedule: {SCHEDULE}; "
          f"{N_TRAIN} evenly spaced training points, {N_TEST} uniform test points. Fit: test MSE "
          f"< {FIT_MSE:g} (the target's variance is 0.5). Plateaued: the best train MSE of the "
          "last quarter of the steps within 10% of the third quarter's, or below 1e-5. "
          f"{len(runs)} runs" + (f" ({copied} of them SIREN or MGDL runs recorded for "
                                 "another activation: the same training, trained once)"
                                 if copied else "") + ". " + backends_line(runs) + "\n\n" +
          "\n".join([screen_md, ver_md, comp_md, conv_md, abl_md, mech_md]) +
          "\n## Every cell\n\nTest MSE mean ± 95% CI over seeds.\n\n" +
          table(["activation", "k", "model", "params", "depth", "seeds", "test MSE",
                 "plateaued", "ĝ distinct / neighbour cos (trained)"], rows) + "\n")
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{name}.md"), os.path.join(out, f"{name}.json")]
    with open(paths[0], "w") as f:
        f.write(md)
    with open(paths[1], "w") as f:
        json.dump({"schedule": SCHEDULE, "fit_mse": FIT_MSE, "runs": len(runs),
                   "screening": screen, "verdicts": ver, "comparisons": comp,
                   "convergence": conv, "ablations": abl, "mechanism": mech, "cells": summary},
                  f, indent=1)
    fig_path = _heatmaps(summary, out, name)
    if fig_path:
        paths.append(fig_path)
    print("wrote " + ", ".join(paths), flush=True)
    return paths


def _heatmaps(summary: List[Dict], out: str, name: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    acts = [a for a in ACTIVATIONS if any(s["activation"] == a for s in summary)]
    if not acts:
        return None
    budget, depth = min((s["budget"], s["depth"]) for s in summary)
    sel_all = [s for s in summary if s["budget"] == budget and s["depth"] == depth]
    ks = sorted({s["k"] for s in sel_all})
    models = [m for m in STAGE2_MODELS if any(s["model"] == m for s in sel_all)]
    fig, axes = plt.subplots(1, len(acts), figsize=(1.6 + 2.2 * len(acts), 3.4), squeeze=False,
                             sharey=True, constrained_layout=True)
    for i, (ax, act) in enumerate(zip(axes[0], acts)):
        grid = [[math.nan] * len(ks) for _ in models]
        for s in sel_all:
            if s["activation"] == act:
                grid[models.index(s["model"])][ks.index(s["k"])] = math.log10(
                    max(s["test_mse"], 1e-12))
        im = ax.imshow(grid, cmap="viridis", vmin=-6, vmax=0, aspect="auto")
        ax.set(xticks=range(len(ks)), xticklabels=ks, yticks=range(len(models)), xlabel="k",
               title=act)
        if i == 0:
            ax.set_yticklabels(models, fontsize=8)
    fig.suptitle(f"mean test MSE, {budget // 1000}k parameters, depth {depth} (blank: not run)",
                 fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 test MSE", shrink=0.9)
    return save_figure(fig, out, name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.study", description=__doc__.split(
        "\n\n    python")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--quick", action="store_true", help="CI size: seconds on 2 cores")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jsonl", default=None,
                   help="results file (default examples/results/study.jsonl; quick: "
                        "examples/results-quick/study.jsonl)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--report", action="store_true", help="only write the report of the file")
    p.add_argument("--k", type=int, nargs="+", default=None, metavar="K",
                   help="run only these frequencies of the stage (e.g. --k 1 2 4 8 16)")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="run at most N of the stage's missing runs, in the stage's order")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help=f"run only these models of the stage (of {', '.join(STAGE2_MODELS)})")
    p.add_argument("--seeds", type=int, default=None, metavar="S",
                   help="run only the stage's seeds below S")
    p.add_argument("--activations", nargs="+", default=None, metavar="ACT",
                   help=f"run only these activations of the stage (of {', '.join(ACTIVATIONS)})")
    p.add_argument("--depth", type=int, default=None, metavar="D",
                   help="run only the stage's runs of this depth (stage 2: 4 or 8)")
    p.add_argument("--budget", type=int, default=None, metavar="P",
                   help="run only the stage's runs of this parameter budget (stage 2: 17000 or "
                        "130000)")
    p.add_argument("--steps", type=int, default=None, metavar="T",
                   help=f"train T steps instead of {STEPS}: the convergence check (its runs "
                        "are reported apart from the stages')")
    args = p.parse_args(argv)
    out = QUICK_RESULTS if args.quick else RESULTS
    path = args.jsonl or os.path.join(out, "study.jsonl")
    runs = load(path)
    if not args.report:
        configs = {1: stage1, 2: lambda q: stage2(runs, q), 3: lambda q: stage3(runs, q)}[
            args.stage](args.quick)
        if not configs:
            print(f"study: stage {args.stage} selects no runs from {path} (run stage 1 first)")
            return 1
        for flag, value, known in (("--models", args.models, STAGE2_MODELS),
                                   ("--activations", args.activations, ACTIVATIONS)):
            if value and set(value) - set(known):
                p.error(f"{flag}: unknown {sorted(set(value) - set(known))}; known: {known}")
        keep = [("--k", args.k, lambda c: c["k"] in args.k),
                ("--activations", args.activations, lambda c: c["activation"] in args.activations),
                ("--models", args.models, lambda c: c["model"] in args.models),
                ("--seeds", args.seeds, lambda c: c["seed"] < args.seeds),
                ("--depth", args.depth, lambda c: c["depth"] == args.depth),
                ("--budget", args.budget, lambda c: c["budget"] == args.budget)]
        for flag, value, ok in keep:
            if value is not None:
                configs = [c for c in configs if ok(c)]
                if not configs:
                    p.error(f"{flag} {value}: stage {args.stage} has no such run left to select")
        if args.steps:
            configs = [dict(c, steps=args.steps) for c in configs]
        runs = run(configs, path, args.workers, args.backend, args.max_runs)
    report(runs, os.path.dirname(os.path.abspath(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
