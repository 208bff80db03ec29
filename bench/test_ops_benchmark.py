"""Op-level timings with pytest-benchmark: `pytest bench/ --benchmark-only`.

Not part of the test suite (pytest's testpaths is tests/) and asserts nothing about time: it
measures one training step of each block, per backend and mode, at the quick shapes of
bench/workloads.py on the default device.
"""
import pytest
import torch

import gradres_fused as gf
from bench.workloads import WORKLOADS

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PEERS = ["plain"] + gf.available_backends(DEVICE)


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "second_order"])
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("workload", ["mlp_narrow", "edsr_block"])
def test_training_step(benchmark, workload, peer, detach):
    torch.manual_seed(0)
    case = WORKLOADS[workload].case("quick", torch.float32, DEVICE, "relu", detach)
    fwd = case.forward(peer)

    def step():
        y = fwd()
        grads = torch.autograd.grad((y * case.proj).sum(), case.params, allow_unused=True)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return grads

    benchmark(step)
