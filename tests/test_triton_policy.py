"""The Triton launch policy (gradres_fused/kernels/policy.py) as the pure function it is: valid
configs for every kernel, arch and row count 0…2^31, monotone in the row count, the compile-count
bound, autotuner pruning; and, in a fresh process importing the kernels as on a GPU, that no kernel
is wrapped in triton.autotune unless GRADRES_AUTOTUNE=1."""
import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

from gradres_fused.kernels import policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = [pytest.param(policy.SM80, id="sm80"), pytest.param(policy.SM90, id="sm90")]
OPERANDS = [pytest.param(op, id=name) for name, op in policy.OPERANDS.items()]
WIDTHS = [1, 3, 16, 17, 64, 100, 128]
GEMM_WIDTHS = [1, 20, 129, 300, 1024, 4096]
# Every bucket boundary from 0 to 2^31: n − 1, n, n + 1 around each power of two.
ROW_COUNTS = sorted({max(0, min(policy.MAX_ROWS, (1 << e) + d))
                     for e in range(32) for d in (-1, 0, 1)} | {0})


def _is_pow2(v):
    return v >= 1 and v & (v - 1) == 0


def _check_valid(cfg, arch, estimate):
    for name, value in cfg.kwargs.items():
        assert _is_pow2(value), f"{name}={value} is not a power of two"
        if name != "GROUP_M":
            assert value >= policy.MIN_DOT, f"{name}={value} < tl.dot's 16"
    assert cfg.num_warps in (4, 8) and cfg.num_stages >= 1
    assert estimate <= arch.shared_bytes, f"{cfg}: {estimate} B > {arch.name} {arch.shared_bytes}"


def _fused_estimate(kernel, elem, cfg, tf32=False):
    kw = cfg.kwargs
    return policy.fused_shared_bytes(kernel, elem, kw["BLOCK_M"], kw["BLOCK_D"], kw["BLOCK_H"],
                                     tf32)


def _gemm_estimate(elem, cfg):
    kw = cfg.kwargs
    return policy.gemm_shared_bytes(elem, kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"],
                                    cfg.num_stages)


def test_row_bucket_covers_0_to_2_31():
    prev = 0
    for n in ROW_COUNTS:
        b = policy.row_bucket(n)
        assert _is_pow2(b) and b >= n and (b == 1 or b < 2 * n), (n, b)
        assert b >= prev
        prev = b
    assert policy.row_bucket(policy.MAX_ROWS) == 2 ** 31
    for bad in (-1, policy.MAX_ROWS + 1):
        with pytest.raises(ValueError, match="rows"):
            policy.row_bucket(bad)


@pytest.mark.parametrize("operand", OPERANDS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", policy.FUSED_KERNELS)
def test_fused_configs_valid_and_monotone(kernel, arch, operand):
    elem, tf32 = operand
    for dim in WIDTHS:
        for hidden in WIDTHS:
            try:
                policy.fused_mlp(kernel, elem, dim, hidden, 1, arch, tf32)
            except ValueError as e:  # no fused config: the width runs on the tiled path
                assert "shared memory" in str(e) or "spill" in str(e)
                assert not policy.fused_fits(elem, dim, hidden, arch, tf32)
                continue
            configs = [policy.fused_mlp(kernel, elem, dim, hidden, n, arch, tf32)
                       for n in ROW_COUNTS]
            blocks = [c["BLOCK_M"] for c in configs]
            assert blocks == sorted(blocks)
            for cfg in configs:
                assert cfg["BLOCK_D"] >= dim and cfg["BLOCK_H"] >= hidden
                _check_valid(cfg, arch, _fused_estimate(kernel, elem, cfg, tf32))


@pytest.mark.parametrize("elem", [4, 2], ids=["fp32", "16bit"])
@pytest.mark.parametrize("arch", ARCHS)
def test_gemm_configs_valid_and_monotone(arch, elem):
    for n in GEMM_WIDTHS:
        for width in GEMM_WIDTHS:
            by_rows_m = [policy.gemm(elem, rows, n, width, arch) for rows in ROW_COUNTS]
            by_rows_k = [policy.gemm(elem, width, n, rows, arch, rows_in="k")
                         for rows in ROW_COUNTS]
            assert [c["BLOCK_M"] for c in by_rows_m] == sorted(c["BLOCK_M"] for c in by_rows_m)
            assert [c["BLOCK_K"] for c in by_rows_k] == sorted(c["BLOCK_K"] for c in by_rows_k)
            for cfg in by_rows_m + by_rows_k:
                _check_valid(cfg, arch, _gemm_estimate(elem, cfg))


@pytest.mark.parametrize("arch", ARCHS)
def test_compile_bound_over_batch_sizes(arch):
    """The docstring's bound: any sequence of batch sizes — 100 distinct random ones, or every
    bucket boundary up to 2^31 — maps each launch site to ≤ MAX_VARIANTS configs; the compiled
    variants are exactly these, the row-count arguments being do_not_specialize (checked in
    test_kernels_import_without_autotuner)."""
    rng = random.Random(0)
    batches = rng.sample(range(1, 1 << 20), 100)
    for rows in (batches, ROW_COUNTS):
        for elem in (4, 2):
            for dim, hidden in ((3, 29), (32, 17), (64, 64) if elem == 2 else (32, 32)):
                for kernel in policy.FUSED_KERNELS:
                    assert len({policy.fused_mlp(kernel, elem, dim, hidden, n, arch, elem == 4)
                                for n in rows}) == 1
            for n, width in ((300, 200), (4096, 1024), (1, 129)):
                sites = ([policy.gemm(elem, r, n, width, arch) for r in rows],
                         [policy.gemm(elem, width, n, r, arch, rows_in="k") for r in rows])
                for site in sites:
                    assert len(set(site)) <= policy.MAX_VARIANTS


def test_a100_limit_holds_where_the_old_config_did_not():
    """The fused backward with 32-row tiles at D = H = 128 needed 197,632 B (fp32, measured by
    the compiler) — over an A100's 166,912: the estimate says so (on a GPU that width now runs
    on the tiled path: its register budget, test_where_no_fused_row_tile_fits)."""
    assert policy.fused_shared_bytes("mlp_fused_bwd", 4, 32, 128, 128) >= 197_632
    cfg = policy.fused_mlp("mlp_fused_bwd", 4, 32, 32, 10 ** 6, policy.SM80, tf32=True)
    assert _fused_estimate("mlp_fused_bwd", 4, cfg, True) <= policy.SM80.shared_bytes


@pytest.mark.parametrize("operand", OPERANDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_autotune_pruning_fits(arch, operand):
    elem, tf32 = operand
    for kernel in policy.FUSED_KERNELS:
        for dim in WIDTHS:
            if not policy.fused_fits(elem, dim, 128, arch, tf32):
                continue  # the tiled path runs this width
            kept = policy.prune(kernel, policy.candidates(kernel), arch, elem, dim=dim,
                                hidden=128, tf32=tf32)
            assert kept
            for cfg in kept:
                assert policy.fused_shared_bytes(kernel, elem, cfg["BLOCK_M"], policy.pow2(dim),
                                                 128, tf32) <= arch.shared_bytes
    for m in (1, 17, 1000, 2 ** 31):
        for n, k in ((16, 4096), (300, 200), (4096, 16)):
            kept = policy.prune(policy.GEMM, policy.candidates(policy.GEMM), arch, elem, m=m,
                                n=n, k=k)
            assert kept
            for cfg in kept:
                assert _gemm_estimate(elem, cfg) <= arch.shared_bytes
                if m >= 128 and n >= 128:  # big enough: nothing wider than twice the extent
                    assert cfg["BLOCK_M"] <= policy.pow2(m) and cfg["BLOCK_N"] <= 2 * n


def test_every_reachable_launch_is_valid():
    """What the compile test chooses from: every (kernel, config, dtype, arch) either policy can
    launch is a valid config within the arch's shared memory by the estimate."""
    launches = list(policy.reachable())
    assert {launch.kernel for launch in launches} == {*policy.FUSED_KERNELS, policy.GEMM}
    for launch in launches:
        elem, tf32 = policy.OPERANDS[launch.dtype]
        est = (_gemm_estimate(elem, launch.config) if launch.kernel == policy.GEMM
               else _fused_estimate(launch.kernel, elem, launch.config, tf32))
        _check_valid(launch.config, launch.arch, est)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="kernel"):
        policy.fused_mlp("mlp_fused_sideways", 4, 8, 8, 1, policy.SM90)
    with pytest.raises(ValueError, match="D, H"):
        policy.fused_mlp("mlp_fused_fwd", 4, 129, 8, 1, policy.SM90)
    with pytest.raises(ValueError, match="elem"):
        policy.gemm(3, 8, 8, 8, policy.SM90)
    with pytest.raises(ValueError, match="rows_in"):
        policy.gemm(4, 8, 8, 8, policy.SM90, rows_in="n")


def test_where_no_fused_row_tile_fits():
    """Blocks the fused kernels do not take on a GPU run on the tiled path (mlp_fused.fits):
    float32 with IEEE dots (register spills, policy.fused_mlp's docstring), D or H above
    FUSED_GPU_MAX_WIDTH = 64 (TF32: 32; spills), and widths no row tile's shared memory fits (float32 at
    D = H = 128 with TF32 dots measured 229,376 B on sm_80 and 237,568 B on sm_90 at 16 rows).
    Triton's interpreter has no register file: it takes every width up to 128."""
    assert policy.fused_shared_bytes("mlp_fused_bwd", 4, 16, 128, 128, tf32=True) >= 237_568
    small = policy.Arch("sm_86", 101_376, 84)
    for arch in (policy.SM80, policy.SM90, small):
        for name, (elem, tf32) in policy.OPERANDS.items():
            for width in (16, 32, 64):
                fused = name != "fp32-ieee" and (width <= 32 or not tf32)
                assert policy.fused_fits(elem, width, width, arch, tf32) == fused
            assert not policy.fused_fits(elem, 128, 128, arch, tf32)
            assert not policy.fused_fits(elem, 64, 65, arch, tf32)
    for elem, tf32 in policy.OPERANDS.values():
        assert policy.fused_fits(elem, 128, 128, policy.INTERPRETER, tf32)


def test_policy_module_imports_without_triton():
    """Pure Python: the policy loads (from its file) in a process where Triton cannot import."""
    code = ("import importlib.util, sys\n"
            "sys.modules['triton'] = None\n"
            f"spec = importlib.util.spec_from_file_location('p', {policy.__file__!r})\n"
            "m = sys.modules['p'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            "print(m.fused_mlp('mlp_fused_bwd', 2, 64, 64, 1000, m.SM80))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "BLOCK_M" in out.stdout, out.stderr
    assert importlib.util.find_spec("triton") is not None  # this test is about the policy only


_IMPORT_PROBE = """
import json, triton
from triton.runtime.autotuner import Autotuner
from gradres_fused.kernels import conv, gemm, mlp_fused, rows
kernels = {name: getattr(mod, name) for mod in (conv, gemm, mlp_fused, rows)
           for name in dir(mod) if name.endswith("_kernel")}
def base(k):
    while not hasattr(k, "arg_names") or isinstance(k, Autotuner):
        k = k.fn
    return k
print(json.dumps({name: [isinstance(k, Autotuner),
                         [p.name for p in base(k).params if p.do_not_specialize]]
                  for name, k in kernels.items()}))
"""


@pytest.mark.parametrize("autotune", [False, True], ids=["default", "GRADRES_AUTOTUNE=1"])
def test_kernels_import_without_autotuner(autotune):
    """Importing the kernels as on a GPU (interpreter off): no kernel object is an Autotuner by
    default; with GRADRES_AUTOTUNE=1 the fused MLP and GEMM kernels are. Row-count arguments are
    do_not_specialize either way."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "GRADRES_AUTOTUNE")}
    if autotune:
        env["GRADRES_AUTOTUNE"] = "1"
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    tuned = {name for name, (is_tuner, _) in found.items() if is_tuner}
    assert tuned == ({"gemm_kernel", "mlp_fused_fwd_kernel", "mlp_fused_bwd_kernel"}
                     if autotune else set())
    rows_args = {"gemm_kernel": {"M", "K1", "K2", "M_KEY", "K_KEY"},
                 "mlp_fused_fwd_kernel": {"N", "ROWS_KEY"},
                 "mlp_fused_bwd_kernel": {"N", "ROWS_KEY"},
                 "hidden_kernel": {"TOTAL"}, "skip_grad_kernel": {"TOTAL"},
                 "zbar_kernel": {"TOTAL"}}
    for name, args in rows_args.items():
        assert args <= set(found[name][1]), (name, found[name][1])
