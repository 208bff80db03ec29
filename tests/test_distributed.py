"""Data-parallel training on CPU: DDP and FSDP2 (gloo, 2 processes, loopback) end with the
parameters of a single-process run, for every CPU backend, detach and second-order modes.

One spawn per wrapper; every backend × mode runs inside it, so the file costs two process-group
start-ups. Every wait is bounded: a hung collective fails the test instead of blocking CI.
"""
from __future__ import annotations

import datetime
import faulthandler
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradres_fused as gf

WORLD_SIZE = 2
STEPS = 3
LOCAL_BATCH = 3
COLLECTIVE_TIMEOUT_S = 60   # one gloo collective
SPAWN_TIMEOUT_S = 240       # a whole scenario (both processes: start, every backend × mode)
# The triton backend runs on CPU only in Triton's interpreter (seconds per call): its data-parallel
# behaviour is the same custom-op path as cpp's, so the CPU runs leave it out.
BACKENDS = [b for b in gf.available_backends("cpu") if b != "triton"]
MODES = {"detach": True, "second-order": False}


class SmallNet(nn.Module):
    """A conv GradRes block on (N, 2, 4, 4), flattened into an MLP GradRes block, then a head."""

    def __init__(self, backend: str, detach: bool):
        super().__init__()
        self.conv = gf.GradResConv2d(2, 3, activation="silu", alpha_init=0.2, detach=detach,
                                     backend=backend)
        self.mlp = gf.GradResMLP(32, 8, activation="tanh", alpha_init=-0.4, detach=detach,
                                 backend=backend)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.mlp(self.conv(x).flatten(1)))


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(WORLD_SIZE * LOCAL_BATCH, STEPS, 2, 4, 4, generator=g)
    t = torch.randn(WORLD_SIZE * LOCAL_BATCH, STEPS, 1, generator=g)
    return x, t


def _train(model, params, x, t, rows):
    """STEPS of SGD on the mean squared error over `rows` of the global batch."""
    opt = torch.optim.SGD(params, lr=0.1)
    for step in range(STEPS):
        opt.zero_grad()
        loss = (model(x[rows, step]) - t[rows, step]).square().mean()
        loss.backward()
        opt.step()


def _single_process(backend, detach, seed, x, t):
    torch.manual_seed(seed)
    model = SmallNet(backend, detach)
    _train(model, model.parameters(), x, t, slice(None))
    return {k: v.detach() for k, v in model.state_dict().items()}


def _full(v):
    """A DTensor shard (FSDP2) gathered to the full tensor; a plain tensor as it is."""
    return v.full_tensor() if hasattr(v, "full_tensor") else v


def _worker(rank: int, port: int, wrapper: str, seed: int):
    # A rank that dies on a signal (seen once: SIGABRT, "terminate called without an active
    # exception", FSDP2 scenario, 2-core machine under load) prints every thread's Python stack.
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        x, t = _data(seed)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for backend in BACKENDS:
            for mode, detach in MODES.items():
                want = _single_process(backend, detach, seed, x, t)
                torch.manual_seed(seed)  # the same initial weights on every rank and above
                model = SmallNet(backend, detach)
                if wrapper == "ddp":
                    from torch.nn.parallel import DistributedDataParallel

                    wrapped = DistributedDataParallel(model)
                    _train(wrapped, wrapped.parameters(), x, t, rows)
                else:
                    from torch.distributed.device_mesh import init_device_mesh
                    from torch.distributed.fsdp import fully_shard

                    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
                    fully_shard(model.conv, mesh=mesh)
                    fully_shard(model.mlp, mesh=mesh)
                    fully_shard(model, mesh=mesh)
                    assert hasattr(model.mlp.alpha, "full_tensor"), "alpha was not sharded"
                    _train(model, model.parameters(), x, t, rows)
                got = {k: _full(v).detach() for k, v in model.state_dict().items()}
                assert got.keys() == want.keys(), (backend, mode, got.keys(), want.keys())
                for k in want:
                    torch.testing.assert_close(
                        got[k], want[k], rtol=1e-5, atol=1e-6,
                        msg=lambda m, k=k: f"{wrapper} {backend} {mode} {k}: {m}")
                dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(wrapper: str, seed: int):
    ctx = mp.start_processes(_worker, args=(_free_port(), wrapper, seed), nprocs=WORLD_SIZE,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{wrapper}: the 2-process run did not finish in {SPAWN_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


def _seed():
    return int(torch.randint(0, 2**31 - 1, ()).item())


def test_ddp_matches_single_process():
    _spawn("ddp", _seed())


def test_fsdp2_fully_shard_per_block_and_root_matches_single_process():
    _spawn("fsdp2", _seed())


def test_training_moves_every_parameter():
    """The parameters compared above all change in 3 steps (else matching would prove little)."""
    x, t = _data(0)
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in SmallNet("composite", False).state_dict().items()}
    after = _single_process("composite", False, 0, x, t)
    for k in before:
        assert not torch.equal(before[k], after[k]), k
