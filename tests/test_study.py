"""examples.study: runs are keyed by configuration and appended, so a study resumes and never
redoes a run; stage 2 selects its cells from stage 1's records by the stated rule."""
import json

import pytest

pytest.importorskip("scipy", reason="examples need scipy (README: Experiments)")

from examples import study  # noqa: E402


def _record(k, act, model, mse, seed=0):
    c = study.config(1, k, act, model, 17000, 4, seed, 6000)
    return {"key": study.key(c), "config": c, "test_mse": mse, "train_mse": mse,
            "plateaued": True}


def test_a_study_resumes_without_redoing_runs(tmp_path, capsys):
    path = str(tmp_path / "s.jsonl")
    configs = study.stage1(quick=True)[:3]
    first = study.run(configs, path, workers=1, backend="auto")
    assert len(first) == 3 and all(r["test_mse"] >= 0 for r in first)
    with open(path, "a") as f:
        f.write('{"torn')  # an interrupted write
    again = study.run(configs + study.stage1(quick=True)[3:4], path, workers=1, backend="auto")
    out = capsys.readouterr().out
    assert "3 already in" in out and "1 to run" in out
    assert len(again) == 4 and len({r["key"] for r in again}) == 4


def test_key_ignores_the_stage_and_orders_the_ablation():
    a = study.config(1, 4, "tanh", "gradres_learn", 17000, 4, 0, 6000, eps=1e-2, normalize=False)
    b = study.config(3, 4, "tanh", "gradres_learn", 17000, 4, 0, 6000, normalize=False, eps=1e-2)
    assert study.key(a) == study.key(b)
    assert json.loads(study.key(a))["eps"] == 1e-2


def test_stage2_selects_differing_cells_and_the_frontier():
    runs = []
    for s in range(2):
        for k, res, grad in ((1, 1e-5, 1e-5), (4, 1e-4, 1e-1), (8, 1e-1, 1e-1)):
            runs += [_record(k, "tanh", "resnet", res * (1 + s / 10), s),
                     _record(k, "tanh", "gradres", grad * (1 + s / 10), s),
                     _record(k, "tanh", "gradres_learn", res * (1 + s / 10), s)]
    # k=4: gradres is worse beyond the seed spread; k=8: the residual net's frontier
    assert study.selected_cells(runs) == [(4, "tanh"), (8, "tanh")]


def test_mechanism_counts_relu_directions_as_few():
    import torch
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 256).unsqueeze(1)
    relu = study.mechanism(study.build("gradres", 16, 1, "relu"), x)
    tanh = study.mechanism(study.build("gradres", 16, 1, "tanh"), x)
    assert relu["distinct_directions"] < tanh["distinct_directions"] == 256
