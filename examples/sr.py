"""x2 single-image super-resolution on scikit-image's bundled photos (no downloads): train on
random patches of the training photos, test PSNR/SSIM on the Y channel (border crop 2) of the
held-out photos. Two architectures, each with plain residual blocks vs gradient residual blocks:

- EDSR-baseline-style: conv head, conv–relu–conv residual blocks (res_scale), conv, global skip,
  conv + pixel-shuffle upsampler, conv tail. Gradient residual blocks are `GradResConv2d`
  (detach, and second-order; fused where the `cpp` backend is built, and the table's "block"
  column names the backend that ran).
- RD-IDN-style (Chen et al., "Residual Dense Information Distillation Network"): two conv+ReLU
  feature-extraction layers → a chain of information-distillation blocks (three conv+ReLU stages,
  each distilling a quarter of its channels, fused by a 1×1 conv), each in a residual skip, with
  dense skips (block i sees every earlier block's output, merged by a 1×1 conv) → upsampler.
  An IDB is not conv–φ–conv, so its gradient residual version wraps it in
  `GradientResidual(IDB)` (reference math through autograd — correct, not fused).
Both add the bicubic upsampling of the input to their output (a global residual; the same for
every variant). PSNR mean ± 95% CI over seeds, and training time per step. For each gradient
residual variant: its PSNR minus the plain one's with a 95% Welch t-interval, and the seeds per
model that interval's half-width would need to reach 0.02 dB at the seed spreads measured.
`--arch`/`--variants` select runs; `--name` names the output files (default sr).

    python -m examples.sr [--quick] [--seeds S] [--steps T] [--json FILE] [--arch A ...]
                          [--variants V ...] [--name NAME]
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gradres_fused as gf

from .common import (backend_that_runs, legend_outside, mean_ci95, n_params, parse_args, parser,
                     pm, progress, save_figure, seed_all, table, timed, welch_ci95,
                     welch_half_width, write)

TRAIN = ["astronaut.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "rocket.jpg",
         "motorcycle_left.png"]
TEST = ["chelsea.png", "coffee.png"]  # held out
SCALE = 2


def load(name: str) -> torch.Tensor:
    """(3, H, W) float in [0, 1], cropped to a multiple of the scale."""
    from skimage import data, io
    img = io.imread(os.path.join(data.data_dir, name))[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255
    h, w = t.shape[1] - t.shape[1] % SCALE, t.shape[2] - t.shape[2] % SCALE
    return t[:, :h, :w]


def downscale(hr: torch.Tensor) -> torch.Tensor:
    """Bicubic (antialiased) x2 downscaling, clamped to [0, 1]."""
    return F.interpolate(hr, scale_factor=1 / SCALE, mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)


def upscale(lr: torch.Tensor) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)


def luma(rgb: torch.Tensor) -> np.ndarray:
    """ITU-R BT.601 Y in [16, 235] (the SR literature's convention)."""
    r, g, b = rgb
    return (16 + 65.481 * r + 128.553 * g + 24.966 * b).numpy()


def psnr_ssim(sr: torch.Tensor, hr: torch.Tensor):
    from skimage.metrics import structural_similarity
    y_sr, y_hr = luma(sr.clamp(0, 1)), luma(hr)
    y_sr, y_hr = y_sr[SCALE:-SCALE, SCALE:-SCALE], y_hr[SCALE:-SCALE, SCALE:-SCALE]
    mse = float(np.mean((y_sr - y_hr) ** 2))
    return 10 * np.log10(255 ** 2 / mse), float(structural_similarity(y_sr, y_hr, data_range=255))


# ---- models ---------------------------------------------------------------------------------------
class PlainBlock(nn.Module):
    def __init__(self, feats, res_scale):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(feats, feats, 3, padding=1), nn.Conv2d(feats, feats, 3,
                                                                                    padding=1)
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.conv2(torch.relu(self.conv1(x)))


def upsampler(feats):
    return nn.Sequential(nn.Conv2d(feats, feats * SCALE ** 2, 3, padding=1),
                         nn.PixelShuffle(SCALE), nn.Conv2d(feats, 3, 3, padding=1))


class EDSR(nn.Module):
    def __init__(self, feats, blocks, variant, backend="auto", res_scale=1.0):
        super().__init__()
        self.head = nn.Conv2d(3, feats, 3, padding=1)
        if variant == "plain":
            body = [PlainBlock(feats, res_scale) for _ in range(blocks)]
        else:
            body = [gf.GradResConv2d(feats, feats, 3, res_scale=res_scale, backend=backend,
                                     detach=variant == "gradres_detach") for _ in range(blocks)]
        self.body = nn.Sequential(*body, nn.Conv2d(feats, feats, 3, padding=1))
        self.tail = upsampler(feats)

    def forward(self, lr):
        f = self.head(lr)
        return self.tail(f + self.body(f)) + upscale(lr)


class IDB(nn.Module):
    """Information distillation block: three conv+ReLU stages, each keeping (distilling) a quarter
    of its channels and refining the rest; a 1×1 conv fuses the distilled parts."""

    def __init__(self, feats):
        super().__init__()
        self.keep = feats // 4
        rest = feats - self.keep
        self.c1 = nn.Conv2d(feats, feats, 3, padding=1)
        self.c2 = nn.Conv2d(rest, feats, 3, padding=1)
        self.c3 = nn.Conv2d(rest, self.keep, 3, padding=1)
        self.fuse = nn.Conv2d(3 * self.keep, feats, 1)

    def forward(self, x):
        d1, r1 = torch.relu(self.c1(x)).split([self.keep, x.shape[1] - self.keep], 1)
        d2, r2 = torch.relu(self.c2(r1)).split([self.keep, x.shape[1] - self.keep], 1)
        d3 = torch.relu(self.c3(r2))
        return self.fuse(torch.cat([d1, d2, d3], 1))


class Skip(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return x + self.module(x)


class RDIDN(nn.Module):
    def __init__(self, feats, blocks, variant, backend="auto"):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, feats, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(feats, feats, 3, padding=1), nn.ReLU())
        wrap = (Skip if variant == "plain" else
                (lambda m: gf.GradientResidual(m, detach=variant == "gradres_detach")))
        self.blocks = nn.ModuleList(wrap(IDB(feats)) for _ in range(blocks))
        # dense skips: block i (i ≥ 1) takes a 1×1 merge of the features and blocks 0..i-1
        self.merge = nn.ModuleList(nn.Conv2d(feats * (i + 1), feats, 1) for i in range(1, blocks))
        self.tail = upsampler(feats)

    def forward(self, lr):
        outs = [self.features(lr)]
        h = outs[0]
        for i, block in enumerate(self.blocks):
            if i:
                h = self.merge[i - 1](torch.cat(outs, 1))
            h = block(h)
            outs.append(h)
        return self.tail(h + outs[0]) + upscale(lr)


VARIANTS = ["plain", "gradres_detach", "gradres_second_order"]


def build(arch, variant, quick, backend):
    feats, blocks = (8, 2) if quick else (32, 4)
    if arch == "edsr":
        return EDSR(feats, blocks, variant, backend)
    return RDIDN(feats, blocks, variant, backend)


def patches(images, n, size, gen):
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        i = int(torch.randint(img.shape[1] - size + 1, (1,), generator=gen))
        j = int(torch.randint(img.shape[2] - size + 1, (1,), generator=gen))
        p = img[:, i:i + size, j:j + size]
        if torch.rand(1, generator=gen) < 0.5:
            p = p.flip(2)
        out.append(p)
    return torch.stack(out)


def train_eval(arch, variant, seed, steps, batch, size, train_imgs, test_imgs, quick, backend):
    seed_all(seed)
    model = build(arch, variant, quick, backend)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4 if not quick else 1e-3)
    gen = torch.Generator().manual_seed(seed)

    def loop():
        for _ in range(steps):
            hr = patches(train_imgs, batch, size, gen)
            opt.zero_grad(set_to_none=True)
            F.l1_loss(model(downscale(hr)), hr).backward()
            opt.step()
    _, seconds = timed(loop)
    scores = []
    with torch.no_grad():
        for hr in test_imgs:
            scores.append(psnr_ssim(model(downscale(hr[None]))[0], hr))
    return scores, seconds / steps, n_params(model)


def seeds_for(sd_a: float, sd_b: float, half_width: float = 0.02, most: int = 1000):
    """Seeds per model (the same for both) for which the 95% Welch t-interval of a difference of
    means has half-width ≤ `half_width`, at standard deviations sd_a, sd_b; None above `most`."""
    for n in range(2, most + 1):
        if welch_half_width(sd_a, n, sd_b, n) <= half_width:
            return n
    return None


def differences(results: dict) -> dict:
    """Each gradient residual variant minus its architecture's plain one: PSNR difference, 95%
    Welch t-interval, and the seeds per model a ±0.02 dB interval would need."""
    out = {}
    for name, r in results.items():
        arch, variant = name.split("/")
        base = results.get(f"{arch}/plain")
        if variant == "plain" or base is None or len(r["psnr_seeds"]) < 2 \
                or len(base["psnr_seeds"]) < 2:
            continue
        a, b = r["psnr_seeds"], base["psnr_seeds"]
        delta, ci = welch_ci95(a, b)
        out[name + " − plain"] = {
            "delta_psnr": delta, "ci95": ci, "seeds": [len(a), len(b)],
            "seeds_for_0.02dB": seeds_for(float(np.std(a, ddof=1)), float(np.std(b, ddof=1)))}
    return out


def main(argv=None):
    p = parser("examples.sr", __doc__)
    p.add_argument("--arch", nargs="+", choices=("edsr", "rdidn"), default=["edsr", "rdidn"])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    p.add_argument("--name", default="sr", help="output files' name (default sr)")
    args = parse_args(p, argv)
    quick = args.quick
    seeds = args.seeds or (1 if quick else 3)
    steps = args.steps or (10 if quick else 2000)
    batch, size = (4, 32) if quick else (16, 48)
    train_imgs = [load(n) for n in TRAIN]
    test_imgs = [load(n) for n in TEST]
    if quick:  # small test crops
        test_imgs = [t[:, :96, :96] for t in test_imgs]
    bicubic = [psnr_ssim(upscale(downscale(hr[None]))[0], hr) for hr in test_imgs]

    results = {}
    jobs = [(a, v, s) for s in range(seeds) for a in args.arch for v in args.variants]
    raw = {}
    for arch, variant, seed in progress(jobs, desc="sr", unit="run"):
        raw.setdefault((arch, variant), []).append(
            train_eval(arch, variant, seed, steps, batch, size, train_imgs, test_imgs, quick,
                       args.backend))
    ran = backend_that_runs(args.backend, torch.device("cpu"))  # the label says which ran
    for (arch, variant), runs in raw.items():
        psnr = [float(np.mean([p for p, _ in scores])) for scores, _, _ in runs]
        ssim = [float(np.mean([s for _, s in scores])) for scores, _, _ in runs]
        per_image = {name: float(np.mean([scores[i][0] for scores, _, _ in runs]))
                     for i, name in enumerate(TEST)}
        results[f"{arch}/{variant}"] = {
            "psnr": mean_ci95(psnr)[0], "psnr_ci95": mean_ci95(psnr)[1], "psnr_seeds": psnr,
            "ssim": mean_ci95(ssim)[0], "ms_per_step": 1e3 * float(np.mean([t for _, t, _ in runs])),
            "params": runs[0][2], "psnr_per_image": per_image,
            "block": (f"GradResConv2d ({ran})" if arch == "edsr" and variant != "plain" else
                      "GradientResidual(IDB) (reference math)" if variant != "plain" else
                      "plain residual")}
    config = dict(quick=quick, seeds=seeds, steps=steps, batch=batch, hr_patch=size,
                  arch=args.arch, variants=args.variants,
                  train=TRAIN, test=TEST, optimizer="Adam, L1 loss", backend=args.backend,
                  bicubic_psnr=float(np.mean([p for p, _ in bicubic])),
                  bicubic_ssim=float(np.mean([s for _, s in bicubic])))
    md = (f"# x2 super-resolution ({'quick' if quick else 'full'} mode)\n\n{config}\n\n"
          f"Y-channel PSNR/SSIM on the held-out photos {TEST} (border crop {SCALE}); "
          f"bicubic: {config['bicubic_psnr']:.2f} dB / {config['bicubic_ssim']:.4f}.\n\n")
    md += table(["model/variant", "block", "params", "PSNR (dB)", "SSIM", "ms/step"],
                [[k, r["block"], str(r["params"]), pm(r["psnr"], r["psnr_ci95"], ".3f", seeds),
                  f"{r['ssim']:.4f}", f"{r['ms_per_step']:.0f}"] for k, r in results.items()])
    diffs = differences(results)
    if diffs:
        md += ("\n\nGradient residual − plain, PSNR (dB), 95% Welch t-interval over seeds; the "
               "seeds per model a ±0.02 dB interval needs at these seed spreads:\n\n" +
               table(["difference", "seeds", "Δ PSNR (dB)", "seeds for ±0.02 dB"],
                     [[k, "/".join(map(str, d["seeds"])),
                       f"{d['delta_psnr']:+.3f} ± {d['ci95']:.3f}",
                       str(d["seeds_for_0.02dB"] or "> 1000")]
                      for k, d in diffs.items()]))
    write(args.out, args.name, {"config": config, "results": results, "differences": diffs}, md,
          args.json)
    _plot(args.out, results, config, args.name)


def _plot(out, results, config, name="sr"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(results)
    ax.bar(range(len(names)), [results[n]["psnr"] for n in names],
           yerr=[results[n]["psnr_ci95"] for n in names], color="C0")
    ax.axhline(config["bicubic_psnr"], color="k", ls="--", label="bicubic")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    lo = min(config["bicubic_psnr"], *[results[n]["psnr"] for n in names])
    ax.set(ylabel="PSNR (dB, Y)", ylim=(lo - 0.5, None), title="x2 SR, held-out photos")
    legend_outside(ax)
    fig.tight_layout()
    save_figure(fig, out, name)


if __name__ == "__main__":
    main()
